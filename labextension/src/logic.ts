/**
 * Pure decisions and wording: what to tell the user, what the status bar says,
 * how the incident list is queried. No DOM, no server: unit-tested on data.
 */

import {
  ACTIONS,
  Action,
  IIncident,
  IIncidentEvent,
  IIncidentFilters,
  INCIDENT_SCHEMA_ID,
  IOutcome,
  IStatus,
  IStrike
} from './types';

/** The incident carried by an event of the server's bus, or null for any other event. */
export function incidentFromEvent(event: {
  schema_id?: string;
  [key: string]: unknown;
}): IIncidentEvent | null {
  if (!event || event.schema_id !== INCIDENT_SCHEMA_ID) {
    return null;
  }
  const data = event as unknown as IIncidentEvent;
  if (
    typeof data.incident_id !== 'string' ||
    typeof data.summary !== 'string' ||
    !(ACTIONS as readonly string[]).includes(data.action)
  ) {
    return null;
  }
  return data;
}

/** The user is told about every incident except those the policy only records. */
export function shouldNotify(incident: IIncidentEvent): boolean {
  return incident.action !== 'record';
}

export const DRY_RUN_NOTE = 'Dry run: nothing was stopped.';

const HEADLINE: Record<string, string> = {
  record: 'Recorded',
  warn: 'Detected',
  refuse: 'Cell not run:',
  stop: 'Stopped',
  interrupt: 'Stopped',
  shutdown: 'Stopped, kernel shut down:'
};

const HEADLINE_MAX = 60;

/** What was detected and done, in a few words: "Stopped crypto-mining: xmrig (pid 3184)." */
export function headline(incident: IIncidentEvent): string {
  const verb = incident.dry_run ? 'Detected' : (HEADLINE[incident.action] ?? 'Detected');
  let what = (incident.summary || `${incident.category}: ${incident.signature}`).replace(/[.\s]+$/, '');
  if (what.length > HEADLINE_MAX) {
    // A notification shows 140 characters: leave room for the platform's message.
    what = `${what.slice(0, HEADLINE_MAX - 1)}…`;
  }
  return `${verb} ${what}.`;
}

/**
 * The notification's text: what was detected, then the platform's message, with the dry-run
 * note first. With several incidents in one notification (they replace each other rather than
 * stack), how many and the latest.
 */
export function notificationText(incident: IIncidentEvent, count = 1): string {
  const message = incident.message || 'colab-guard acted on your kernel.';
  const latest = `${headline(incident)} ${message}`;
  const text = count > 1 ? `${count} incidents. Latest: ${latest}` : latest;
  return incident.dry_run ? `${DRY_RUN_NOTE} ${text}` : text;
}

const DONE_WORDING: Record<string, string> = {
  record: 'The incident was recorded.',
  warn: 'You were warned.',
  refuse: 'The cell was not run.',
  stop: 'The offending processes were stopped.',
  interrupt: 'The kernel was interrupted and the offending processes were stopped.',
  shutdown: 'The offending processes were stopped and the kernel was shut down.'
};

/** One sentence on what the guard did (or, in dry-run mode, would have done). */
export function actionSentence(incident: IIncidentEvent): string {
  if (incident.dry_run) {
    return (
      `${DRY_RUN_NOTE} The guard would have applied the action ` +
      `'${incident.action}'.`
    );
  }
  return DONE_WORDING[incident.action] ?? `Action: ${incident.action}.`;
}

/** "stop pid 3184: done" for each outcome, in order. */
export function outcomeLines(outcomes: IOutcome[] | undefined): string[] {
  return (outcomes ?? []).map(o => {
    const detail = o.detail ? ` (${o.detail})` : '';
    return `${o.action} ${o.target}: ${o.outcome}${detail}`;
  });
}

/** Only http(s) links are shown as links (a javascript: URL is not a policy). */
export function safeLink(url: string | undefined | null): string | null {
  if (!url) {
    return null;
  }
  try {
    const parsed = new URL(url);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:'
      ? parsed.href
      : null;
  } catch {
    return null;
  }
}

export type GuardState = 'on' | 'dry-run' | 'off' | 'unknown';

export function guardState(status: IStatus | null): GuardState {
  if (!status) {
    return 'unknown';
  }
  if (!status.enabled) {
    return 'off';
  }
  return status.dry_run ? 'dry-run' : 'on';
}

/** "2 of 3 strikes" once the user is one strike from the limit or at it; '' otherwise. */
export function strikesText(status: IStatus | null): string {
  const strikes = status?.strikes ?? 0;
  const limit = status?.strike_limit ?? 0;
  if (!status?.enabled || limit <= 0 || strikes <= 0 || strikes < limit - 1) {
    return '';
  }
  return `${strikes} of ${limit} ${limit === 1 ? 'strike' : 'strikes'}`;
}

export interface IStrikeWarning {
  /** Same key, same warning: shown once. */
  key: string;
  type: 'warning' | 'error';
  text: string;
}

/** The warning before the strike limit (one strike from it) and the notice at it. */
export function strikeWarning(status: IStatus | null): IStrikeWarning | null {
  const count = strikesText(status);
  if (!count || !status) {
    return null;
  }
  const strikes = status.strikes ?? 0;
  const limit = status.strike_limit ?? 0;
  const key = `${strikes}/${limit}`;
  // Short: a notification shows its first 140 characters.
  if (strikes >= limit) {
    return {
      key,
      type: 'error',
      text:
        `colab-guard: ${count}: new kernels are refused until they expire or an admin ` +
        'clears them. Appeal a mistake in My incidents.'
    };
  }
  return {
    key,
    type: 'warning',
    text:
      `colab-guard: ${count}. One more and new kernels will be refused. ` +
      'Appeal a mistake in My incidents.'
  };
}

/** The status bar's text and tooltip. */
export function statusBarText(
  status: IStatus | null,
  incidents: number
): { text: string; title: string } {
  const state = guardState(status);
  const label = {
    on: 'Guard: on',
    'dry-run': 'Guard: dry run',
    off: 'Guard: off',
    unknown: 'Guard: ?'
  }[state];
  const plural = incidents === 1 ? 'incident' : 'incidents';
  const title = {
    on: 'colab-guard watches your kernels',
    'dry-run': 'colab-guard watches your kernels in dry-run mode: it records, stops nothing',
    off: 'colab-guard is switched off: kernels are not watched',
    unknown: 'colab-guard status unknown (the server did not answer)'
  }[state];
  const strikes = strikesText(status);
  const refused = strikes && (status?.strikes ?? 0) >= (status?.strike_limit ?? 0);
  const strikesTitle = strikes
    ? ` You have ${strikes}` +
      (refused ? ': new kernels are refused.' : '; at the limit new kernels are refused.')
    : '';
  const covered = status?.watcher?.covered === true;
  const shown = state === 'off' && covered ? 'Guard: node watcher' : label;
  return {
    text:
      (state === 'off' && !covered) || state === 'unknown'
        ? label
        : `${shown} · ${incidents}` + (strikes ? ` · ${strikes}` : ''),
    title:
      `${title}. ${incidents} ${plural} in this server session; click to see yours.` +
      `${strikesTitle}${watcherTitle(status)}${userSettingsTitle(status)}`
  };
}

/** Whether a node watcher covers this server, for the status bar's tooltip. */
export function watcherTitle(status: IStatus | null): string {
  const watcher = status?.watcher;
  if (!watcher) {
    return '';
  }
  if (watcher.covered) {
    return (
      ' A node watcher (root) covers this server: it checks and stops the processes of your ' +
      'kernels and terminals, also while this server is stopped.'
    );
  }
  return ` No node watcher covers this server${watcher.reason ? ` (${watcher.reason})` : ''}.`;
}

/** The guard settings the user can change themselves, for the status bar's tooltip. */
export function userSettingsTitle(status: IStatus | null): string {
  const mine = (status?.settings_from ?? []).filter(source => source.user_writable);
  if (!mine.length) {
    return '';
  }
  const listed = mine.map(source => `${source.setting} (in ${source.source})`).join(', ');
  const binds = status?.watcher?.covered ? ' and do not bind the node watcher' : '';
  return ` Settings from files you can write apply to this server only${binds}: ${listed}.`;
}

/** Incidents the node watcher handled while no server of the user listened, not shown yet. */
export function missedIncidents(status: IStatus | null, shown: Set<string>): string[] {
  return (status?.watcher?.told_on_return ?? [])
    .map(incident => incident.id)
    .filter(id => typeof id === 'string' && !shown.has(id));
}

/** The query string of GET /colab-guard/api/incidents for these filters. */
export function incidentsQuery(filters: IIncidentFilters): string {
  const params = new URLSearchParams();
  const text = (key: string, value: string | undefined) => {
    const trimmed = (value ?? '').trim();
    if (trimmed) {
      params.set(key, trimmed);
    }
  };
  text('category', filters.category);
  text('user', filters.user);
  text('kernel_id', filters.kernel_id);
  if (filters.since !== undefined && Number.isFinite(filters.since)) {
    params.set('since', String(Math.floor(filters.since)));
  }
  if (filters.limit !== undefined) {
    params.set('limit', String(filters.limit));
  }
  const query = params.toString();
  return query ? `?${query}` : '';
}

/** Time windows offered by the panel's time filter, in seconds (0: all). */
export const TIME_WINDOWS: { label: string; seconds: number }[] = [
  { label: 'any time', seconds: 0 },
  { label: 'last hour', seconds: 3600 },
  { label: 'last 24 hours', seconds: 86400 },
  { label: 'last 7 days', seconds: 7 * 86400 },
  { label: 'last 30 days', seconds: 30 * 86400 }
];

/** `since` (epoch seconds) for a time window, or undefined for "any time". */
export function sinceFor(windowSeconds: number, nowMs: number): number | undefined {
  return windowSeconds > 0 ? nowMs / 1000 - windowSeconds : undefined;
}

/** A short local time for tables; the raw value when it is not a date. */
export function shortTime(iso: string): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return iso;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** An appeal's text is required and short. */
export const APPEAL_MAX_LENGTH = 2000;

export function appealProblem(text: string): string | null {
  const trimmed = text.trim();
  if (!trimmed) {
    return 'Write a short explanation before sending the appeal.';
  }
  if (trimmed.length > APPEAL_MAX_LENGTH) {
    return `The explanation is too long (${trimmed.length} characters, at most ${APPEAL_MAX_LENGTH}).`;
  }
  return null;
}

/** The title of the "Details" dialog. */
export function detailsTitle(incident: IIncidentEvent): string {
  if (incident.dry_run) {
    return 'colab-guard (dry run): forbidden use detected';
  }
  return incident.action === 'warn'
    ? 'colab-guard: forbidden use detected'
    : 'colab-guard stopped forbidden use';
}

/** Whether (and why not) the user may appeal an incident from the panel. */
export type AppealState = 'not-own' | 'pending' | 'accepted' | 'can-appeal';

export function appealState(incident: IIncident, user: string | undefined): AppealState {
  if (!user || incident.user !== user) {
    return 'not-own';
  }
  const appeals = incident.appeals ?? [];
  if (appeals.some(a => a.status === 'pending')) {
    return 'pending';
  }
  if (appeals.some(a => a.status === 'accepted')) {
    return 'accepted';
  }
  return 'can-appeal'; // never appealed, or rejected: one may appeal again
}

/** Whether ``action`` is stronger than ``than`` (ACTIONS, weakest first; unknown: weakest). */
export function stronger(action: string, than: string | undefined): boolean {
  const rank = (name: string | undefined) => ACTIONS.indexOf(name as Action);
  return rank(action) > rank(than);
}

/** An incident from the API seen as the event the Details dialog shows. */
export function eventFromIncident(
  incident: IIncident,
  status: IStatus | null
): IIncidentEvent {
  let action: Action = 'record';
  for (const outcome of incident.actions ?? []) {
    if (stronger(outcome.action, action)) {
      action = outcome.action as Action;
    }
  }
  return {
    incident_id: incident.id,
    kernel_id: incident.kernel_id,
    notebook: incident.notebook,
    user: incident.user,
    category: incident.category,
    severity: incident.severity,
    signature: incident.signature,
    summary: incident.summary || `${incident.category}: ${incident.signature}`,
    action,
    outcomes: incident.actions,
    dry_run: incident.dry_run,
    message: status?.warning_message || '',
    policy_url: status?.policy_url
  };
}

/** Strikes in force grouped by user, most first: what the admin panel lists. */
export function strikesByUser(
  strikes: IStrike[]
): { user: string; count: number; categories: string[]; latest: string }[] {
  const users = new Map<string, { user: string; count: number; categories: string[]; latest: string }>();
  for (const strike of strikes) {
    const entry = users.get(strike.user) ?? {
      user: strike.user,
      count: 0,
      categories: [],
      latest: strike.time
    };
    entry.count += 1;
    if (!entry.categories.includes(strike.category)) {
      entry.categories.push(strike.category);
    }
    if (strike.time > entry.latest) {
      entry.latest = strike.time;
    }
    users.set(strike.user, entry);
  }
  return Array.from(users.values()).sort(
    (a, b) => b.count - a.count || a.user.localeCompare(b.user)
  );
}

/** A reply to an appeal is optional and short (the server takes up to 2000 characters). */
export function replyProblem(text: string): string | null {
  const trimmed = text.trim();
  return trimmed.length > APPEAL_MAX_LENGTH
    ? `The reply is too long (${trimmed.length} characters, at most ${APPEAL_MAX_LENGTH}).`
    : null;
}

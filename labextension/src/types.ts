/**
 * Shapes of what the colab-guard server sends: the incident event on the
 * server's event bus, and the REST API's answers. Every text field may hold
 * untrusted evidence (command lines come from the user's programs).
 */

export const INCIDENT_SCHEMA_ID =
  'https://schema.jupyter.org/colab_guard/incident/v1';

/** colab_guard/vocabulary.py ACTIONS, weakest first (checked by tests/test_vocabulary.py). */
export const ACTIONS = [
  'record',
  'warn',
  'refuse',
  'stop',
  'interrupt',
  'shutdown'
] as const;
export type Action = (typeof ACTIONS)[number];

export interface IOutcome {
  action: string;
  target: string;
  outcome: string;
  detail?: string;
}

/** The incident event (schema colab_guard/incident/v1). */
export interface IIncidentEvent {
  incident_id: string;
  kernel_id: string;
  notebook?: string | null;
  user?: string;
  category: string;
  severity: string;
  signature: string;
  summary: string;
  action: Action;
  outcomes?: IOutcome[];
  dry_run: boolean;
  strike?: boolean;
  /** The installed package the program came from (then no strike). */
  package?: IPackage | null;
  message: string;
  policy_url?: string;
}

/** Fair strikes: the installed Python distribution an offending program came from. */
export interface IPackage {
  name: string;
  version: string;
  path: string;
}

export interface IProcessEvidence {
  pid: number;
  ppid?: number;
  name?: string;
  exe?: string;
  cmdline?: string;
  cpu_percent?: number;
  rss_mb?: number;
  threads?: number;
  is_kernel?: boolean;
  sockets?: string[];
  [other: string]: unknown;
}

export interface IMatch {
  signature: string;
  reasons?: string[];
}

export interface IAppeal {
  id: string;
  incident_id: string;
  user: string;
  text: string;
  time: string;
  status: string;
  reply?: string | null;
}

export interface IIncident {
  id: string;
  time: string;
  kernel_id: string;
  notebook?: string | null;
  user: string;
  category: string;
  severity: string;
  signature: string;
  signatures?: string[];
  description?: string;
  summary?: string;
  evidence?: {
    processes?: IProcessEvidence[];
    matches?: IMatch[];
    cell?: ICellEvidence;
    [other: string]: unknown;
  };
  dry_run: boolean;
  status: string;
  strike?: boolean;
  package?: IPackage | null;
  actions?: IOutcome[];
  appeals?: IAppeal[];
}

/** A cell checked before it ran: its source, and what made each signature match. */
export interface ICellEvidence {
  source: string;
  findings?: { signature: string; line?: number | null; text: string }[];
}

export interface IStatus {
  enabled: boolean;
  dry_run: boolean;
  sample_interval?: number;
  kernels_monitored?: number;
  signatures?: number;
  ticks?: number;
  policy_url?: string;
  warning_message?: string;
  admin?: boolean;
  user?: string;
  incidents_this_session?: number;
  /** Strikes in force against the server's user, and the limit (0: never refused). */
  strikes?: number;
  strike_limit?: number;
  /** The categories incidents may have: built-in, declared by the operator, in `actions`. */
  categories?: string[];
  /** Reporting incidents to the hub service (ColabGuard.hub_url). */
  reporting?: {
    enabled: boolean;
    queued: number;
    sent?: number;
    refused?: number;
    dropped?: number;
    failures?: number;
    last_error?: string | null;
  };
  /** Whether a node watcher (root) covers this server, and what it told meanwhile. */
  watcher?: IWatcherStatus;
  /** Guard settings this server's user can change (files they can write). */
  user_writable_settings?: string[];
  settings_from?: ISettingSource[];
}

export interface IWatcherStatus {
  covered: boolean;
  reason?: string;
  /** Incidents that happened while no server of the user listened: shown once Lab loads. */
  told_on_return?: { id: string; summary: string; action: string }[];
}

export interface ISettingSource {
  setting: string;
  source: string;
  user_writable: boolean;
}

/** A strike in force (GET /colab-guard/api/strikes). */
export interface IStrike {
  incident_id: string;
  user: string;
  time: string;
  category: string;
}

export interface IStrikes {
  strikes: IStrike[];
  strike_limit: number;
  strike_window: number;
}

export type AppealDecision = 'accept' | 'reject';

/** Filters of GET /colab-guard/api/incidents. */
export interface IIncidentFilters {
  category?: string;
  user?: string;
  kernel_id?: string;
  /** Seconds since the epoch. */
  since?: number;
  limit?: number;
}

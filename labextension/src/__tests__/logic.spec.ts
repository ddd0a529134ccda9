import { describe, expect, it } from 'vitest';

import {
  actionSentence,
  appealProblem,
  appealState,
  APPEAL_MAX_LENGTH,
  eventFromIncident,
  replyProblem,
  strikesByUser,
  strikesText,
  strikeWarning,
  DRY_RUN_NOTE,
  incidentFromEvent,
  incidentsQuery,
  notificationText,
  outcomeLines,
  safeLink,
  shouldNotify,
  sinceFor,
  statusBarText,
  missedIncidents
} from '../logic';
import { INCIDENT_SCHEMA_ID } from '../types';
import { incident, incidentEvent } from './fixtures';

describe('incidentFromEvent', () => {
  it('takes the incident from an event of the incident schema', () => {
    const event = { schema_id: INCIDENT_SCHEMA_ID, ...incidentEvent() };
    expect(incidentFromEvent(event)?.incident_id).toBe('inc-1');
  });

  it('ignores the events of other schemas', () => {
    const event = { ...incidentEvent(), schema_id: 'https://events.jupyter.org/jupyter_server/contents_service/v1' };
    expect(incidentFromEvent(event)).toBeNull();
  });

  it('ignores a malformed incident event', () => {
    expect(incidentFromEvent({ schema_id: INCIDENT_SCHEMA_ID, incident_id: 'x' })).toBeNull();
    expect(
      incidentFromEvent({ schema_id: INCIDENT_SCHEMA_ID, ...incidentEvent(), action: 'explode' as any })
    ).toBeNull();
  });
});

describe('notification', () => {
  it('is shown for every action but record', () => {
    expect(shouldNotify(incidentEvent({ action: 'record' }))).toBe(false);
    for (const action of ['warn', 'refuse', 'stop', 'interrupt', 'shutdown'] as const) {
      expect(shouldNotify(incidentEvent({ action }))).toBe(true);
    }
  });

  it("says what was detected, then the platform's message", () => {
    expect(notificationText(incidentEvent())).toBe(
      'Stopped crypto-mining: xmrig (pid 3184). Mining is not allowed here.'
    );
    expect(notificationText(incidentEvent({ action: 'warn', summary: 'torrenting: aria2c (pid 9)' }))).toBe(
      'Detected torrenting: aria2c (pid 9). Mining is not allowed here.'
    );
  });

  it('keeps what was detected short, so the message still shows', () => {
    const long = notificationText(incidentEvent({ summary: `crypto-mining: ${'x'.repeat(200)} (pid 1)` }));
    expect(long).toMatch(/^Stopped crypto-mining: x+…\. Mining is not allowed here\.$/);
    expect(long.length).toBeLessThan(140);
  });

  it('says when a cell was not run', () => {
    const refused = incidentEvent({
      action: 'refuse',
      summary: 'crypto-mining: cell',
      outcomes: [{ action: 'refuse', target: 'cell', outcome: 'done' }]
    });
    expect(incidentFromEvent({ schema_id: INCIDENT_SCHEMA_ID, ...refused })?.action).toBe('refuse');
    expect(notificationText(refused)).toBe('Cell not run: crypto-mining: cell. Mining is not allowed here.');
    expect(actionSentence(refused)).toBe('The cell was not run.');
  });

  it('differs from one incident to the next, and counts them when grouped', () => {
    const first = notificationText(incidentEvent());
    const second = notificationText(incidentEvent({ summary: 'password-cracking: john (pid 77)' }));
    expect(first).not.toBe(second);
    expect(notificationText(incidentEvent(), 3)).toBe(
      '3 incidents. Latest: Stopped crypto-mining: xmrig (pid 3184). ' +
        'Mining is not allowed here.'
    );
  });

  it('says first that nothing was stopped in dry-run mode', () => {
    const text = notificationText(incidentEvent({ dry_run: true }));
    expect(text.startsWith(DRY_RUN_NOTE)).toBe(true);
    expect(text).toContain('Mining is not allowed here.');
    expect(actionSentence(incidentEvent({ dry_run: true }))).toContain('nothing was stopped');
  });

  it('says what was done, with each outcome', () => {
    expect(actionSentence(incidentEvent())).toBe(
      'The kernel was interrupted and the offending processes were stopped.'
    );
    expect(outcomeLines(incidentEvent().outcomes)).toEqual([
      'interrupt kernel: done',
      'stop pid 3184: done'
    ]);
  });
});

describe('safeLink', () => {
  it('keeps http(s) links and refuses the others', () => {
    expect(safeLink('https://example.org/aup')).toBe('https://example.org/aup');
    expect(safeLink('javascript:alert(1)')).toBeNull();
    expect(safeLink('data:text/html,<b>x</b>')).toBeNull();
    expect(safeLink('not a url')).toBeNull();
    expect(safeLink('')).toBeNull();
  });
});

describe('statusBarText', () => {
  const status = { enabled: true, dry_run: false };

  it('shows the state and the count', () => {
    expect(statusBarText(status, 2).text).toBe('Guard: on · 2');
    expect(statusBarText({ ...status, dry_run: true }, 0).text).toBe('Guard: dry run · 0');
    expect(statusBarText({ ...status, enabled: false }, 0).text).toBe('Guard: off');
    expect(statusBarText(null, 0).text).toBe('Guard: ?');
  });

  it('explains itself in the tooltip', () => {
    expect(statusBarText(status, 1).title).toContain('1 incident in this server session');
    expect(statusBarText({ ...status, dry_run: true }, 3).title).toContain('dry-run');
  });
});

describe('the node watcher in the status bar', () => {
  const status = { enabled: true, dry_run: false };
  const covered = { covered: true, reason: 'covered by the node watcher (pid 7) for user alice' };

  it('says whether a watcher covers the server', () => {
    expect(statusBarText({ ...status, watcher: covered }, 1).title).toContain(
      'A node watcher (root) covers this server'
    );
    const alone = { covered: false, reason: 'no node watcher socket at /run/colab-guard/watch.sock' };
    const title = statusBarText({ ...status, watcher: alone }, 0).title;
    expect(title).toContain('No node watcher covers this server (no node watcher socket');
    expect(statusBarText(status, 0).title).not.toContain('node watcher');
  });

  it('shows the watcher still at work when the user switched the guard off', () => {
    const off = { ...status, enabled: false };
    expect(statusBarText({ ...off, watcher: covered }, 2).text).toBe('Guard: node watcher · 2');
    expect(statusBarText({ ...off, watcher: { covered: false } }, 2).text).toBe('Guard: off');
  });

  it('lists the settings the user can change, and whether they bind the watcher', () => {
    const settings_from = [
      { setting: 'ColabGuard.enabled', source: '/home/alice/.jupyter/jupyter_server_config.json', user_writable: true },
      { setting: 'ColabGuard.policy_url', source: '/etc/jupyter/jupyter_server_config.json', user_writable: false }
    ];
    const alone = statusBarText({ ...status, settings_from }, 0).title;
    expect(alone).toContain(
      'Settings from files you can write apply to this server only: ColabGuard.enabled (in /home/alice/.jupyter/jupyter_server_config.json).'
    );
    expect(alone).not.toContain('policy_url');
    const withWatcher = statusBarText({ ...status, settings_from, watcher: covered }, 0).title;
    expect(withWatcher).toContain('apply to this server only and do not bind the node watcher');
  });

  it('tells once what the watcher did while no server listened', () => {
    const told_on_return = [
      { id: 'a1', summary: 'crypto-mining: kworker (pid 9)', action: 'interrupt' },
      { id: 'b2', summary: 'torrenting: x (pid 10)', action: 'stop' }
    ];
    const withMissed = { ...status, watcher: { ...covered, told_on_return } };
    expect(missedIncidents(withMissed, new Set())).toEqual(['a1', 'b2']);
    expect(missedIncidents(withMissed, new Set(['a1']))).toEqual(['b2']);
    expect(missedIncidents(status, new Set())).toEqual([]);
  });
});

describe('strikes', () => {
  const status = { enabled: true, dry_run: false, strike_limit: 3 };

  it('are shown from one strike before the limit', () => {
    expect(strikesText({ ...status, strikes: 1 })).toBe('');
    expect(strikesText({ ...status, strikes: 2 })).toBe('2 of 3 strikes');
    expect(strikesText({ ...status, strikes: 3 })).toBe('3 of 3 strikes');
    expect(strikesText({ ...status, strikes: 5, strike_limit: 0 })).toBe('');
    expect(strikesText({ ...status, strikes: 2, enabled: false })).toBe('');
    expect(statusBarText({ ...status, strikes: 2 }, 2).text).toBe('Guard: on · 2 · 2 of 3 strikes');
    expect(statusBarText({ ...status, strikes: 1 }, 1).text).toBe('Guard: on · 1');
    expect(statusBarText({ ...status, strikes: 3 }, 3).title).toContain('new kernels are refused');
  });

  it('warn before the limit and explain the refusal at it', () => {
    expect(strikeWarning({ ...status, strikes: 1 })).toBeNull();
    const before = strikeWarning({ ...status, strikes: 2 })!;
    expect(before.type).toBe('warning');
    expect(before.text).toBe(
      'colab-guard: 2 of 3 strikes. One more and new kernels will be refused. Appeal a mistake in My incidents.'
    );
    expect(before.text.length).toBeLessThanOrEqual(140); // a notification shows no more
    const at = strikeWarning({ ...status, strikes: 3 })!;
    expect(at.type).toBe('error');
    expect(at.text).toContain('3 of 3 strikes: new kernels are refused');
    expect(at.text.length).toBeLessThanOrEqual(140);
    expect(at.key).not.toBe(before.key);
  });

  it('are grouped by user for the admin panel', () => {
    const strike = (user: string, category: string, time: string) => ({
      incident_id: `${user}-${time}`,
      user,
      category,
      time
    });
    expect(
      strikesByUser([
        strike('bob', 'torrenting', '2026-11-26T10:00:00+00:00'),
        strike('alice', 'crypto-mining', '2026-11-26T09:00:00+00:00'),
        strike('bob', 'crypto-mining', '2026-11-26T11:00:00+00:00'),
        strike('bob', 'torrenting', '2026-11-26T08:00:00+00:00')
      ])
    ).toEqual([
      { user: 'bob', count: 3, categories: ['torrenting', 'crypto-mining'], latest: '2026-11-26T11:00:00+00:00' },
      { user: 'alice', count: 1, categories: ['crypto-mining'], latest: '2026-11-26T09:00:00+00:00' }
    ]);
  });
});

describe('appeals from the panel', () => {
  it("are offered for one's own incidents without a pending or accepted appeal", () => {
    const appeal = (status: string) => ({ ...incident().appeals![0], status });
    expect(appealState(incident({ appeals: [] }), 'alice')).toBe('can-appeal');
    expect(appealState(incident({ appeals: [appeal('pending')] }), 'alice')).toBe('pending');
    expect(appealState(incident({ appeals: [appeal('accepted')] }), 'alice')).toBe('accepted');
    expect(appealState(incident({ appeals: [appeal('rejected')] }), 'alice')).toBe('can-appeal');
    expect(appealState(incident({ appeals: [] }), 'bob')).toBe('not-own');
    expect(appealState(incident({ appeals: [] }), undefined)).toBe('not-own');
  });

  it('show the incident as the Details dialog does', () => {
    const event = eventFromIncident(incident(), {
      enabled: true,
      dry_run: false,
      warning_message: 'Mining is not allowed here.',
      policy_url: 'https://example.org/aup'
    });
    expect(event.incident_id).toBe('inc-1');
    expect(event.action).toBe('interrupt');
    expect(event.message).toBe('Mining is not allowed here.');
    expect(event.policy_url).toBe('https://example.org/aup');
    expect(event.summary).toBe('crypto-mining: xmrig (pid 3184)');
  });

  it('take a reply of up to 2000 characters', () => {
    expect(replyProblem('')).toBeNull();
    expect(replyProblem('x'.repeat(APPEAL_MAX_LENGTH + 1))).toMatch(/too long/);
  });
});

describe('incidentsQuery', () => {
  it('sends only the filters that are set', () => {
    expect(incidentsQuery({})).toBe('');
    expect(
      incidentsQuery({ category: 'crypto-mining', user: ' bob ', kernel_id: '', since: 1700000000.7, limit: 50 })
    ).toBe('?category=crypto-mining&user=bob&since=1700000000&limit=50');
  });

  it('escapes what it sends', () => {
    expect(incidentsQuery({ user: 'a&b=c' })).toBe('?user=a%26b%3Dc');
  });

  it('turns a time window into since', () => {
    expect(sinceFor(0, 1_000_000)).toBeUndefined();
    expect(sinceFor(3600, 10_000_000)).toBe(10_000 - 3600);
  });
});

describe('appealProblem', () => {
  it('requires a short explanation', () => {
    expect(appealProblem('   ')).toMatch(/short explanation/);
    expect(appealProblem('x'.repeat(APPEAL_MAX_LENGTH + 1))).toMatch(/too long/);
    expect(appealProblem('I was running the course benchmark')).toBeNull();
  });
});

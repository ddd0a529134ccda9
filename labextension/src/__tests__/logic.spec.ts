import { describe, expect, it } from 'vitest';

import {
  actionSentence,
  appealProblem,
  APPEAL_MAX_LENGTH,
  DRY_RUN_NOTE,
  incidentFromEvent,
  incidentsQuery,
  notificationText,
  outcomeLines,
  safeLink,
  shouldNotify,
  sinceFor,
  statusBarText
} from '../logic';
import { INCIDENT_SCHEMA_ID } from '../types';
import { incidentEvent } from './fixtures';

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
    for (const action of ['warn', 'stop', 'interrupt', 'shutdown'] as const) {
      expect(shouldNotify(incidentEvent({ action }))).toBe(true);
    }
  });

  it("carries the platform's message", () => {
    expect(notificationText(incidentEvent())).toBe('Mining is not allowed here.');
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

import { Widget } from '@lumino/widgets';
import { afterEach, describe, expect, it } from 'vitest';

import { IGuardAPI } from '../api';
import { IncidentPanel, IPanelActions } from '../panel';
import { AppealDecision, IAppeal, IIncident, IIncidentFilters, IStatus, IStrikes } from '../types';
import { HOSTILE, incident } from './fixtures';

/** A stand-in for the server: records the filters, answers with canned incidents. */
class FakeAPI implements IGuardAPI {
  queries: IIncidentFilters[] = [];
  failing = false;
  constructor(private readonly all: IIncident[]) {}
  async status(): Promise<IStatus> {
    return { enabled: true, dry_run: false, admin: true, user: 'root' };
  }
  async incidents(filters: IIncidentFilters): Promise<IIncident[]> {
    this.queries.push(filters);
    if (this.failing) {
      throw new Error('403 Forbidden');
    }
    return this.all.filter(i => !filters.category || i.category === filters.category);
  }
  async incident(id: string): Promise<IIncident> {
    const found = this.all.find(i => i.id === id);
    if (!found) {
      throw new Error('404');
    }
    return found;
  }
  async appeal(): Promise<IAppeal> {
    throw new Error('not used');
  }
  pending: IAppeal[] = [];
  strikeList: IStrikes = { strikes: [], strike_limit: 3, strike_window: 604800 };
  async appeals(): Promise<IAppeal[]> {
    return this.pending;
  }
  async resolveAppeal(): Promise<IAppeal> {
    throw new Error('not used');
  }
  async strikes(): Promise<IStrikes> {
    return this.strikeList;
  }
  async clearStrikes(): Promise<number> {
    throw new Error('not used');
  }
}

/** Records what the panel's buttons asked for; each "dialog" answers done. */
class FakeActions implements IPanelActions {
  calls: string[] = [];
  async appeal(incident: IIncident): Promise<boolean> {
    this.calls.push(`appeal ${incident.id}`);
    return true;
  }
  async resolve(appeal: IAppeal, what: string, decision: AppealDecision): Promise<boolean> {
    this.calls.push(`${decision} ${appeal.id} (${what})`);
    return true;
  }
  async clearStrikes(user: string, count: number): Promise<boolean> {
    this.calls.push(`clear ${user} ${count}`);
    return true;
  }
}

const settle = () => new Promise(resolve => setTimeout(resolve, 0));

const NOW = Date.UTC(2026, 10, 26, 12, 0, 0);
const mining = incident();
const torrent = incident({ id: 'inc-2', category: 'torrenting', user: 'bob', summary: 'torrenting: rtorrent' });

function mount(panel: IncidentPanel): IncidentPanel {
  Widget.attach(panel, document.body);
  return panel;
}

function select(panel: IncidentPanel, cls: string, value: string): void {
  const control = panel.node.querySelector(cls) as HTMLSelectElement | HTMLInputElement;
  control.value = value;
}

afterEach(() => {
  document.body.replaceChildren();
});

describe('IncidentPanel', () => {
  it('lists the incidents and sends the filters to the server', async () => {
    const api = new FakeAPI([mining, torrent]);
    const panel = mount(new IncidentPanel({ api, now: () => NOW }));
    await panel.refresh();
    expect(panel.node.querySelectorAll('tr[data-incident-id]')).toHaveLength(2);

    select(panel, '.jp-ColabGuard-filter-category', 'torrenting');
    select(panel, '.jp-ColabGuard-filter-user', 'bob');
    select(panel, '.jp-ColabGuard-filter-kernel', 'k-9');
    select(panel, '.jp-ColabGuard-filter-time', '3600');
    await panel.refresh();
    expect(api.queries[api.queries.length - 1]).toEqual({
      category: 'torrenting',
      user: 'bob',
      kernel_id: 'k-9',
      since: NOW / 1000 - 3600,
      limit: 500
    });
    const rows = panel.node.querySelectorAll('tr[data-incident-id]');
    expect(Array.from(rows).map(r => r.getAttribute('data-incident-id'))).toEqual(['inc-2']);
  });

  it('shows the evidence of the selected incident, hostile text as text', async () => {
    const panel = mount(new IncidentPanel({ api: new FakeAPI([mining, torrent]), now: () => NOW }));
    await panel.refresh();
    await panel.select('inc-1');
    const detail = panel.node.querySelector('.jp-ColabGuard-detail')!;
    expect(detail.querySelector('img')).toBeNull();
    expect(detail.textContent).toContain(HOSTILE);
    expect(panel.node.querySelector('tr.jp-mod-selected')?.getAttribute('data-incident-id')).toBe('inc-1');
  });

  it("shows only the user's own incidents in 'mine' mode, without a user filter", async () => {
    const api = new FakeAPI([mining]);
    const panel = mount(new IncidentPanel({ api, onlyUser: 'alice', now: () => NOW }));
    await panel.refresh();
    expect(panel.node.querySelector('.jp-ColabGuard-filter-user')).toBeNull();
    expect(api.queries[0].user).toBe('alice');
    expect(panel.title.label).toBe('My incidents');
    const headers = Array.from(panel.node.querySelectorAll('th')).map(th => th.textContent);
    expect(headers).not.toContain('User');
    const row = panel.node.querySelector('tr[data-incident-id]')!;
    expect(row.querySelectorAll('td')).toHaveLength(headers.length);
  });

  it('says why when the incidents cannot be loaded', async () => {
    const api = new FakeAPI([mining]);
    api.failing = true;
    const panel = mount(new IncidentPanel({ api, now: () => NOW }));
    await panel.refresh();
    expect(panel.node.querySelector('.jp-ColabGuard-panel-message')?.textContent).toContain('403 Forbidden');
  });

  it("offers an Appeal button for one's own incidents, not while an appeal is pending", async () => {
    const pendingAppeal = mining.appeals![0];
    const fresh = incident({ id: 'inc-3', appeals: [] });
    const rejected = incident({ id: 'inc-4', appeals: [{ ...pendingAppeal, status: 'rejected' }] });
    const pending = incident({ id: 'inc-5', appeals: [{ ...pendingAppeal, status: 'pending' }] });
    const api = new FakeAPI([fresh, rejected, pending, torrent]);
    const actions = new FakeActions();
    const panel = mount(new IncidentPanel({ api, onlyUser: 'alice', user: () => 'alice', actions, now: () => NOW }));
    await panel.refresh();
    const button = (id: string) =>
      panel.node.querySelector(`tr[data-incident-id='${id}'] .jp-ColabGuard-appeal-button`) as HTMLButtonElement | null;
    expect(button('inc-3')).not.toBeNull();
    expect(button('inc-4')).not.toBeNull(); // rejected: one may appeal again
    expect(button('inc-5')).toBeNull();
    expect(panel.node.querySelector("tr[data-incident-id='inc-5']")?.textContent).toContain('appeal pending');
    expect(button('inc-2')).toBeNull(); // bob's

    const queries = api.queries.length;
    button('inc-3')!.click();
    await settle();
    expect(actions.calls).toEqual(['appeal inc-3']);
    expect(panel.node.querySelector('tr.jp-mod-selected')).toBeNull(); // the click was not the row's
    expect(api.queries.length).toBe(queries + 1); // refreshed after the appeal
  });

  it('lets an admin resolve pending appeals and clear strikes', async () => {
    const api = new FakeAPI([mining, torrent]);
    api.pending = [{ ...mining.appeals![0], id: 'ap-9', status: 'pending' }];
    api.strikeList.strikes = [
      { incident_id: 'inc-2', user: 'bob', category: 'torrenting', time: '2026-11-26T10:00:00+00:00' },
      { incident_id: 'inc-7', user: 'bob', category: 'crypto-mining', time: '2026-11-26T11:00:00+00:00' }
    ];
    const actions = new FakeActions();
    const panel = mount(new IncidentPanel({ api, user: () => 'root', admin: () => true, actions, now: () => NOW }));
    await panel.refresh();
    const appealRow = panel.node.querySelector("tr[data-appeal-id='ap-9']")!;
    expect(appealRow.textContent).toContain(HOSTILE);
    expect(appealRow.textContent).toContain('crypto-mining: xmrig (pid 3184)');
    (appealRow.querySelector('.jp-ColabGuard-accept') as HTMLButtonElement).click();
    (appealRow.querySelector('.jp-ColabGuard-reject') as HTMLButtonElement).click();
    const strikeRow = panel.node.querySelector("tr[data-strikes-user='bob']")!;
    expect(strikeRow.textContent).toContain('2 of 3');
    expect(strikeRow.textContent).toContain('torrenting, crypto-mining');
    (strikeRow.querySelector('.jp-ColabGuard-clear-strikes') as HTMLButtonElement).click();
    await settle();
    expect(actions.calls).toEqual([
      'accept ap-9 (crypto-mining: xmrig (pid 3184))',
      'reject ap-9 (crypto-mining: xmrig (pid 3184))',
      'clear bob 2'
    ]);
    expect(panel.node.querySelector('img')).toBeNull();
  });

  it('shows no admin controls to a user who is not an admin, nor in "mine" mode', async () => {
    const api = new FakeAPI([mining]);
    api.pending = [{ ...mining.appeals![0], status: 'pending' }];
    const actions = new FakeActions();
    for (const options of [{ admin: () => false }, { admin: () => true, onlyUser: 'alice' }]) {
      const panel = mount(new IncidentPanel({ api, actions, now: () => NOW, ...options }));
      await panel.refresh();
      expect(panel.node.querySelector('.jp-ColabGuard-pending-appeals')).toBeNull();
      expect(panel.node.querySelector('.jp-ColabGuard-clear-strikes')).toBeNull();
    }
  });

  it("offers the server's categories in the filter (none hard-coded here)", async () => {
    const panel = mount(
      new IncidentPanel({ api: new FakeAPI([torrent]), categories: () => ['course-cheating', 'proxy'], now: () => NOW })
    );
    await panel.refresh();
    const options = Array.from(panel.node.querySelectorAll('.jp-ColabGuard-filter-category option')).map(
      o => o.getAttribute('value')
    );
    expect(options).toEqual(['', 'course-cheating', 'proxy', 'torrenting']);
  });
});

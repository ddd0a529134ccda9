import { Widget } from '@lumino/widgets';
import { afterEach, describe, expect, it } from 'vitest';

import { IGuardAPI } from '../api';
import { IncidentPanel } from '../panel';
import { IAppeal, IIncident, IIncidentFilters, IStatus } from '../types';
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
}

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
});

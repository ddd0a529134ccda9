/**
 * The incident panel: a table of incidents with filters (category, user,
 * kernel, time) and the detail view of the selected incident's evidence.
 * Admins get every user's incidents; "mine" mode shows the user's own.
 */

import { Widget } from '@lumino/widgets';

import { IGuardAPI } from './api';
import { h } from './dom';
import { sinceFor, TIME_WINDOWS } from './logic';
import { incidentRow, INCIDENT_COLUMNS, renderIncident } from './render';
import { IIncident, IIncidentFilters } from './types';

export const KNOWN_CATEGORIES = [
  'crypto-mining',
  'torrenting',
  'password-cracking',
  'deepfake',
  'remote-access',
  'proxy',
  'denial-of-service',
  'scanning',
  'web-hosting',
  'tampering'
];

export interface IIncidentPanelOptions {
  api: IGuardAPI;
  /** Show only this user's incidents, without a user filter ('': the server decides whose). */
  onlyUser?: string;
  /** Milliseconds since the epoch; injectable for tests. */
  now?: () => number;
}

export class IncidentPanel extends Widget {
  constructor(options: IIncidentPanelOptions) {
    super();
    this.api = options.api;
    this.onlyUser = options.onlyUser;
    this.now = options.now ?? Date.now;
    this.addClass('jp-ColabGuard-panel');
    this.title.label = options.onlyUser !== undefined ? 'My incidents' : 'Incidents';
    this.title.caption = 'colab-guard incidents';
    this.title.closable = true;

    this.category = h('select', { class: 'jp-ColabGuard-filter-category', title: 'Category' });
    this.setCategories([]);
    this.user = h('input', {
      class: 'jp-ColabGuard-filter-user',
      type: 'text',
      placeholder: 'user',
      title: 'User'
    });
    this.kernel = h('input', {
      class: 'jp-ColabGuard-filter-kernel',
      type: 'text',
      placeholder: 'kernel id',
      title: 'Kernel id'
    });
    this.window = h(
      'select',
      { class: 'jp-ColabGuard-filter-time', title: 'Time' },
      ...TIME_WINDOWS.map(w => h('option', { value: String(w.seconds) }, w.label))
    );
    const refresh = h('button', { class: 'jp-mod-styled jp-ColabGuard-refresh', type: 'submit' }, 'Refresh');
    const form = h(
      'form',
      { class: 'jp-ColabGuard-filters' },
      this.category,
      this.onlyUser === undefined ? this.user : null,
      this.kernel,
      this.window,
      refresh
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.refresh();
    });
    for (const control of [this.category, this.window]) {
      control.addEventListener('change', () => void this.refresh());
    }
    this.message = h('div', { class: 'jp-ColabGuard-panel-message' });
    this.list = h('div', { class: 'jp-ColabGuard-list' });
    this.detail = h('div', { class: 'jp-ColabGuard-detail' });
    this.node.append(form, this.message, this.list, this.detail);
  }

  /** The filters as the form shows them now. */
  filters(): IIncidentFilters {
    const windowSeconds = Number(this.window.value);
    return {
      category: this.category.value || undefined,
      user: (this.onlyUser ?? this.user.value) || undefined,
      kernel_id: this.kernel.value || undefined,
      since: sinceFor(windowSeconds, this.now()),
      limit: 500
    };
  }

  /** Fetch the incidents for the current filters and show them. */
  async refresh(): Promise<void> {
    const generation = ++this.generation;
    this.message.textContent = 'Loading…';
    try {
      const incidents = await this.api.incidents(this.filters());
      if (generation !== this.generation) {
        return; // a newer refresh was started meanwhile
      }
      this.incidents = incidents;
      this.setCategories(incidents.map(i => i.category));
      this.showList(incidents);
      this.message.textContent =
        incidents.length === 1 ? '1 incident' : `${incidents.length} incidents`;
    } catch (error) {
      if (generation === this.generation) {
        this.message.textContent = `Could not load the incidents: ${(error as Error).message}`;
      }
    }
  }

  /** Fetch one incident and show its evidence under the table. */
  async select(id: string): Promise<void> {
    for (const row of Array.from(this.list.querySelectorAll('tr[data-incident-id]'))) {
      row.classList.toggle('jp-mod-selected', row.getAttribute('data-incident-id') === id);
    }
    this.detail.textContent = 'Loading…';
    try {
      const incident = await this.api.incident(id);
      this.detail.replaceChildren(renderIncident(incident));
    } catch (error) {
      this.detail.textContent = `Could not load incident ${id}: ${(error as Error).message}`;
    }
  }

  get shownIncidents(): readonly IIncident[] {
    return this.incidents;
  }

  private showList(incidents: IIncident[]): void {
    // In "mine" mode every row is the same user's: no User column.
    const keep = INCIDENT_COLUMNS.map(c => this.onlyUser === undefined || c !== 'User');
    const body = h('tbody', {});
    for (const incident of incidents) {
      const cells = incidentRow(incident).filter((_, i) => keep[i]);
      const row = h(
        'tr',
        { 'data-incident-id': incident.id, tabindex: '0', title: 'Show the evidence' },
        ...cells.map(text => h('td', {}, text))
      );
      row.addEventListener('click', () => void this.select(incident.id));
      row.addEventListener('keydown', event => {
        if (event.key === 'Enter') {
          void this.select(incident.id);
        }
      });
      body.appendChild(row);
    }
    const headers = INCIDENT_COLUMNS.filter((_, i) => keep[i]);
    this.list.replaceChildren(
      h(
        'table',
        { class: 'jp-ColabGuard-table jp-ColabGuard-incidents' },
        h('thead', {}, h('tr', {}, ...headers.map(text => h('th', {}, text)))),
        body
      )
    );
  }

  private setCategories(seen: string[]): void {
    const current = this.category.value;
    const all = Array.from(new Set([...KNOWN_CATEGORIES, ...seen, current].filter(Boolean))).sort();
    this.category.replaceChildren(
      h('option', { value: '' }, 'any category'),
      ...all.map(c => h('option', { value: c }, c))
    );
    this.category.value = current;
  }

  private readonly api: IGuardAPI;
  private readonly onlyUser: string | undefined;
  private readonly now: () => number;
  private readonly category: HTMLSelectElement;
  private readonly user: HTMLInputElement;
  private readonly kernel: HTMLInputElement;
  private readonly window: HTMLSelectElement;
  private readonly message: HTMLDivElement;
  private readonly list: HTMLDivElement;
  private readonly detail: HTMLDivElement;
  private incidents: IIncident[] = [];
  private generation = 0;
}

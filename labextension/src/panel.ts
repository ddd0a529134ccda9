/**
 * The incident panel: a table of incidents with filters (category, user,
 * kernel, time) and the detail view of the selected incident's evidence.
 * Admins get every user's incidents; "mine" mode shows the user's own.
 */

import { Widget } from '@lumino/widgets';

import { IGuardAPI } from './api';
import { h } from './dom';
import { appealState, shortTime, sinceFor, strikesByUser, TIME_WINDOWS } from './logic';
import { incidentRow, INCIDENT_COLUMNS, renderIncident } from './render';
import { AppealDecision, IAppeal, IIncident, IIncidentFilters, IStrikes } from './types';

/** What the panel's buttons do (dialogs and requests); each true once done. */
export interface IPanelActions {
  /** The user appeals one of their own incidents. */
  appeal(incident: IIncident): Promise<boolean>;
  /** Admins: accept or reject an appeal (what: the incident, in a few words). */
  resolve(appeal: IAppeal, what: string, decision: AppealDecision): Promise<boolean>;
  /** Admins: clear a user's strikes. */
  clearStrikes(user: string, count: number): Promise<boolean>;
}


export interface IIncidentPanelOptions {
  api: IGuardAPI;
  /** Show only this user's incidents, without a user filter ('': the server decides whose). */
  onlyUser?: string;
  /** Milliseconds since the epoch; injectable for tests. */
  now?: () => number;
  /** The current user's name (their own incidents get an Appeal button). */
  user?: () => string | undefined;
  /** The categories the server knows (status.categories), offered by the category filter. */
  categories?: () => string[] | undefined;
  /** Whether the current user is an admin (the full panel resolves appeals, clears strikes). */
  admin?: () => boolean;
  actions?: IPanelActions;
}

export class IncidentPanel extends Widget {
  constructor(options: IIncidentPanelOptions) {
    super();
    this.api = options.api;
    this.onlyUser = options.onlyUser;
    this.now = options.now ?? Date.now;
    this.currentUser = options.user ?? (() => undefined);
    this.knownCategories = options.categories ?? (() => undefined);
    this.isAdmin = options.admin ?? (() => false);
    this.actions = options.actions;
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
    this.adminArea = h('div', { class: 'jp-ColabGuard-admin' });
    this.list = h('div', { class: 'jp-ColabGuard-list' });
    this.detail = h('div', { class: 'jp-ColabGuard-detail' });
    this.node.append(form, this.message, this.adminArea, this.list, this.detail);
  }

  /** Admins in the full panel: pending appeals and strikes in force, with their buttons. */
  private get adminMode(): boolean {
    return this.onlyUser === undefined && this.isAdmin();
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
      if (this.adminMode) {
        const [appeals, strikes] = await Promise.all([
          this.api.appeals('pending'),
          this.api.strikes()
        ]);
        if (generation === this.generation) {
          this.showAdmin(appeals, strikes);
        }
      } else {
        this.adminArea.replaceChildren();
      }
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
      row.lastElementChild?.append(this.appealControl(incident));
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

  /** The Appeals cell's control: an Appeal button for one's own incident, or its state. */
  private appealControl(incident: IIncident): Node {
    const state = appealState(incident, this.currentUser());
    if (state === 'pending' || state === 'accepted') {
      return h('span', { class: 'jp-ColabGuard-appeal-state' }, ` (appeal ${state})`);
    }
    if (state !== 'can-appeal' || !this.actions) {
      return document.createTextNode('');
    }
    const button = h(
      'button',
      { class: 'jp-mod-styled jp-ColabGuard-appeal-button', type: 'button', title: 'Appeal this incident: explain to the admins' },
      'Appeal'
    );
    button.addEventListener('click', event => {
      event.stopPropagation(); // not a click on the row
      void this.actions!.appeal(incident).then(done => {
        if (done) {
          void this.refresh();
        }
      });
    });
    button.addEventListener('keydown', event => event.stopPropagation());
    return button;
  }

  private button(label: string, cls: string, title: string, onClick: () => Promise<boolean>): HTMLButtonElement {
    const button = h('button', { class: `jp-mod-styled ${cls}`, type: 'button', title }, label);
    button.addEventListener('click', event => {
      event.stopPropagation();
      void onClick().then(done => {
        if (done) {
          void this.refresh();
        }
      });
    });
    return button;
  }

  private showAdmin(appeals: IAppeal[], strikes: IStrikes): void {
    const actions = this.actions;
    const summaries = new Map(this.incidents.map(i => [i.id, i.summary || `${i.category}: ${i.signature}`]));
    const appealRows = appeals.map(appeal => {
      const what = summaries.get(appeal.incident_id) ?? `incident ${appeal.incident_id}`;
      const incidentLink = h('a', { href: '#', class: 'jp-ColabGuard-incident-link', title: 'Show the evidence' }, what);
      incidentLink.addEventListener('click', event => {
        event.preventDefault();
        void this.select(appeal.incident_id);
      });
      return h(
        'tr',
        { 'data-appeal-id': appeal.id },
        h('td', {}, shortTime(appeal.time)),
        h('td', {}, appeal.user),
        h('td', {}, incidentLink),
        h('td', {}, appeal.text),
        h(
          'td',
          { class: 'jp-ColabGuard-actions-cell' },
          actions
            ? this.button('Accept…', 'jp-mod-accept jp-ColabGuard-accept', 'Accept: the strike is removed', () =>
                actions.resolve(appeal, what, 'accept')
              )
            : null,
          actions
            ? this.button('Reject…', 'jp-mod-warn jp-ColabGuard-reject', 'Reject: the strike stays', () =>
                actions.resolve(appeal, what, 'reject')
              )
            : null
        )
      );
    });
    const limit = strikes.strike_limit;
    const strikeRows = strikesByUser(strikes.strikes).map(entry =>
      h(
        'tr',
        { 'data-strikes-user': entry.user },
        h('td', {}, entry.user),
        h('td', {}, limit ? `${entry.count} of ${limit}${entry.count >= limit ? ' (new kernels refused)' : ''}` : String(entry.count)),
        h('td', {}, entry.categories.join(', ')),
        h('td', {}, shortTime(entry.latest)),
        h(
          'td',
          { class: 'jp-ColabGuard-actions-cell' },
          actions
            ? this.button('Clear strikes…', 'jp-mod-warn jp-ColabGuard-clear-strikes', `Clear ${entry.user}'s strikes`, () =>
                actions.clearStrikes(entry.user, entry.count)
              )
            : null
        )
      )
    );
    const table = (cls: string, headers: string[], rows: HTMLElement[]) =>
      h(
        'table',
        { class: `jp-ColabGuard-table ${cls}` },
        h('thead', {}, h('tr', {}, ...headers.map(text => h('th', {}, text)))),
        h('tbody', {}, ...rows)
      );
    this.adminArea.replaceChildren(
      h('h3', {}, `Pending appeals (${appeals.length})`),
      appeals.length
        ? table('jp-ColabGuard-pending-appeals', ['Time', 'User', 'Incident', 'Explanation', ''], appealRows)
        : h('p', {}, 'No appeal waits for an answer.'),
      h('h3', {}, `Strikes in force (${strikes.strikes.length})`),
      strikeRows.length
        ? table('jp-ColabGuard-strikes', ['User', 'Strikes', 'Categories', 'Latest', ''], strikeRows)
        : h('p', {}, 'No strikes in force.'),
      h('h3', {}, 'Incidents')
    );
  }

  private setCategories(seen: string[]): void {
    const current = this.category.value;
    const known = this.knownCategories ? this.knownCategories() ?? [] : [];
    const all = Array.from(new Set([...known, ...seen, current].filter(Boolean))).sort();
    this.category.replaceChildren(
      h('option', { value: '' }, 'any category'),
      ...all.map(c => h('option', { value: c }, c))
    );
    this.category.value = current;
  }

  private readonly api: IGuardAPI;
  private readonly onlyUser: string | undefined;
  private readonly now: () => number;
  private readonly currentUser: () => string | undefined;
  private readonly knownCategories: () => string[] | undefined;
  private readonly isAdmin: () => boolean;
  private readonly actions: IPanelActions | undefined;
  private readonly adminArea: HTMLDivElement;
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

/**
 * What the dialogs and the panel show, built as DOM with text nodes only.
 */

import { h, link } from './dom';
import {
  actionSentence,
  outcomeLines,
  safeLink,
  shortTime
} from './logic';
import { ICellEvidence, IIncident, IIncidentEvent, IPackage, IProcessEvidence } from './types';

/** The body of the "Details" dialog for an incident event. */
export function renderEventDetails(incident: IIncidentEvent): HTMLElement {
  const policy = safeLink(incident.policy_url);
  const outcomes = outcomeLines(incident.outcomes);
  return h(
    'div',
    { class: 'jp-ColabGuard-details' },
    h('p', { class: 'jp-ColabGuard-message' }, incident.message),
    h(
      'dl',
      {},
      h('dt', {}, 'What was detected'),
      h('dd', { class: 'jp-ColabGuard-summary' }, incident.summary),
      h('dt', {}, 'Category'),
      h('dd', {}, `${incident.category} (severity ${incident.severity}, signature ${incident.signature})`),
      h('dt', {}, 'Notebook'),
      h('dd', { class: 'jp-ColabGuard-notebook' }, incident.notebook || 'unknown (a kernel without a notebook)'),
      h('dt', {}, 'What was done'),
      h(
        'dd',
        { class: 'jp-ColabGuard-done' },
        actionSentence(incident),
        outcomes.length
          ? h('ul', {}, ...outcomes.map(line => h('li', {}, line)))
          : null
      ),
      incident.package ? h('dt', {}, 'Strike') : null,
      incident.package
        ? h('dd', { class: 'jp-ColabGuard-strike' }, strikeText(incident))
        : null,
      h('dt', {}, 'Incident'),
      h('dd', { class: 'jp-ColabGuard-incident-id' }, incident.incident_id)
    ),
    policy
      ? h('p', {}, 'Policy: ', link(policy, policy))
      : null
  );
}

/** Whether the incident counts against its user; fair strikes name the package. */
export function strikeText(incident: { strike?: boolean; package?: IPackage | null }): string {
  const p = incident.package;
  if (p) {
    return `no: the program came from the installed package ${p.name} ${p.version} (${p.path})`;
  }
  return incident.strike ? 'yes' : 'no';
}

const PROCESS_COLUMNS: [keyof IProcessEvidence, string][] = [
  ['pid', 'PID'],
  ['ppid', 'PPID'],
  ['name', 'Name'],
  ['exe', 'Executable'],
  ['cmdline', 'Command line'],
  ['cpu_percent', 'CPU %'],
  ['rss_mb', 'RSS MiB'],
  ['threads', 'Threads'],
  ['is_kernel', 'Kernel'],
  ['sockets', 'Sockets']
];

function cellText(value: unknown): string {
  if (value === null || value === undefined) {
    return '';
  }
  if (typeof value === 'number') {
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }
  if (typeof value === 'boolean') {
    return value ? 'yes' : 'no';
  }
  if (typeof value === 'string') {
    return value;
  }
  return JSON.stringify(value);
}

/** A path that may break after each '/' and nowhere else (text nodes and <wbr> only). */
export function pathNode(path: string): HTMLElement {
  const node = h('span', { class: 'jp-ColabGuard-path' });
  path.split(/(?<=\/)/).forEach((part, i) => {
    if (i > 0) {
      node.appendChild(document.createElement('wbr'));
    }
    node.appendChild(document.createTextNode(part));
  });
  return node;
}

/** "sockets_total" -> "sockets total". */
function label(key: string): string {
  return key.replace(/_/g, ' ');
}

/**
 * Figures the table has no column for, in words: "GPU 97 %, 1536 MiB", "started 2026-11-26
 * 09:46:40", "40 sockets, 20 shown". GPU figures only when the process used the GPU (no
 * "gpu_percent=0" on a machine without one); nothing for empty values.
 */
export function otherFigures(process: IProcessEvidence): string[] {
  const known = new Set(PROCESS_COLUMNS.map(([key]) => key as string));
  const figures: string[] = [];
  const gpuPercent = Number(process.gpu_percent ?? 0);
  const gpuMemory = Number(process.gpu_memory_mb ?? 0);
  if (gpuPercent > 0 || gpuMemory > 0) {
    const parts = [];
    if (gpuPercent > 0) {
      parts.push(`${cellText(gpuPercent)} %`);
    }
    if (gpuMemory > 0) {
      parts.push(`${cellText(gpuMemory)} MiB`);
    }
    figures.push(`GPU ${parts.join(', ')}`);
  }
  const shown = Array.isArray(process.sockets) ? process.sockets.length : 0;
  const total = Number(process.sockets_total ?? shown);
  if (total > shown) {
    figures.push(`${total} sockets, ${shown} shown`);
  }
  for (const [key, value] of Object.entries(process)) {
    if (
      known.has(key) ||
      ['gpu_percent', 'gpu_memory_mb', 'sockets_total'].includes(key) ||
      value === null ||
      value === undefined ||
      value === '' ||
      (Array.isArray(value) && value.length === 0)
    ) {
      continue;
    }
    if (key === 'started' && typeof value === 'string') {
      figures.push(`started ${shortTime(value)}`);
    } else if (Array.isArray(value)) {
      figures.push(`${label(key)}: ${value.map(v => cellText(v)).join(', ')}`);
    } else {
      figures.push(`${label(key)}: ${cellText(value)}`);
    }
  }
  return figures;
}

function table(
  className: string,
  headers: string[],
  rows: (string | Node)[][]
): HTMLTableElement {
  return h(
    'table',
    { class: `jp-ColabGuard-table ${className}` },
    h('thead', {}, h('tr', {}, ...headers.map(text => h('th', {}, text)))),
    h(
      'tbody',
      {},
      ...rows.map(cells => h('tr', {}, ...cells.map(cell => h('td', {}, cell))))
    )
  );
}

export function renderProcesses(processes: IProcessEvidence[]): HTMLElement {
  const withOther = processes.some(p => otherFigures(p).length > 0);
  const headers = PROCESS_COLUMNS.map(([, label]) => label);
  if (withOther) {
    headers.push('Other');
  }
  const rows = processes.map(process => {
    const cells: (string | Node)[] = PROCESS_COLUMNS.map(([key]) => {
      const value = process[key];
      if (key === 'sockets') {
        const sockets = (value as string[] | undefined) ?? [];
        return h('ul', { class: 'jp-ColabGuard-sockets' }, ...sockets.map(s => h('li', {}, String(s))));
      }
      if (key === 'cmdline') {
        return h('code', { class: 'jp-ColabGuard-cmdline' }, cellText(value));
      }
      if (key === 'exe') {
        return pathNode(cellText(value));
      }
      if (key === 'pid' || key === 'ppid') {
        return h('span', { class: 'jp-ColabGuard-nowrap' }, cellText(value));
      }
      return cellText(value);
    });
    if (withOther) {
      const figures = otherFigures(process);
      cells.push(
        h('ul', { class: 'jp-ColabGuard-other' }, ...figures.map(f => h('li', {}, f)))
      );
    }
    return cells;
  });
  return table('jp-ColabGuard-processes', headers, rows);
}

/** A cell checked before it ran: what matched (with its line) and the source, as text. */
export function renderCell(cell: ICellEvidence): HTMLElement {
  const findings = cell.findings ?? [];
  return h(
    'div',
    { class: 'jp-ColabGuard-cell' },
    h('h4', {}, 'The cell'),
    findings.length
      ? h(
          'ul',
          { class: 'jp-ColabGuard-findings' },
          ...findings.map(f =>
            h('li', {}, `${f.line ? `line ${f.line}: ` : ''}${f.text} (${f.signature})`)
          )
        )
      : null,
    h('pre', { class: 'jp-ColabGuard-cell-source' }, cell.source ?? '')
  );
}

/** The detail view of one incident: evidence, actions and outcomes, appeals. */
export function renderIncident(incident: IIncident): HTMLElement {
  const evidence = incident.evidence ?? {};
  const processes = evidence.processes ?? [];
  const matches = evidence.matches ?? [];
  const actions = incident.actions ?? [];
  const appeals = incident.appeals ?? [];
  return h(
    'div',
    { class: 'jp-ColabGuard-incident' },
    h('h3', {}, incident.summary || `${incident.category}: ${incident.signature}`),
    h(
      'dl',
      {},
      h('dt', {}, 'Incident'),
      h('dd', {}, incident.id),
      h('dt', {}, 'Time'),
      h('dd', {}, shortTime(incident.time)),
      h('dt', {}, 'User'),
      h('dd', {}, incident.user),
      h('dt', {}, 'Kernel'),
      h('dd', {}, incident.kernel_id),
      h('dt', {}, 'Notebook'),
      h('dd', {}, incident.notebook || 'unknown'),
      h('dt', {}, 'Category'),
      h('dd', {}, `${incident.category} (severity ${incident.severity})`),
      h('dt', {}, 'Signatures'),
      h('dd', {}, (incident.signatures ?? [incident.signature]).join(', ')),
      h('dt', {}, 'Status'),
      h('dd', {}, incident.dry_run ? `${incident.status} (dry run: nothing was stopped)` : incident.status),
      h('dt', {}, 'Strike'),
      h('dd', { class: 'jp-ColabGuard-strike' }, strikeText(incident))
    ),
    incident.description ? h('p', {}, incident.description) : null,
    h('h4', {}, 'Why it matched'),
    matches.length
      ? h(
          'ul',
          { class: 'jp-ColabGuard-matches' },
          ...matches.map(m =>
            h('li', {}, `${m.signature}: ${(m.reasons ?? []).join('; ')}`)
          )
        )
      : h('p', {}, 'No match details.'),
    evidence.cell ? renderCell(evidence.cell) : null,
    evidence.cell && !processes.length ? null : h('h4', {}, `Processes (${processes.length})`),
    processes.length
      ? renderProcesses(processes)
      : evidence.cell
        ? null
        : h('p', {}, 'No processes recorded.'),
    h('h4', {}, 'Actions and outcomes'),
    actions.length
      ? table(
          'jp-ColabGuard-actions',
          ['Action', 'Target', 'Outcome', 'Detail'],
          actions.map(a => [a.action, a.target, a.outcome, a.detail ?? ''])
        )
      : h('p', {}, 'No actions.'),
    h('h4', {}, `Appeals (${appeals.length})`),
    appeals.length
      ? table(
          'jp-ColabGuard-appeals',
          ['Time', 'User', 'Explanation', 'Status', 'Reply'],
          appeals.map(a => [shortTime(a.time), a.user, a.text, a.status, a.reply ?? ''])
        )
      : h('p', {}, 'No appeals.')
  );
}

/** One row of the incident table. */
export function incidentRow(incident: IIncident): string[] {
  const outcome = (incident.actions ?? [])
    .filter(a => a.action !== 'record')
    .map(a => `${a.action}: ${a.outcome}`)
    .join(', ');
  return [
    shortTime(incident.time),
    incident.user,
    incident.category,
    incident.severity,
    incident.summary || incident.signature,
    incident.notebook || incident.kernel_id,
    incident.dry_run ? `dry run (${incident.status})` : outcome || incident.status,
    String((incident.appeals ?? []).length)
  ];
}

export const INCIDENT_COLUMNS = [
  'Time',
  'User',
  'Category',
  'Severity',
  'What',
  'Notebook or kernel',
  'Actions',
  'Appeals'
];

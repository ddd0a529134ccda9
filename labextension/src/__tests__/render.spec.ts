import { describe, expect, it } from 'vitest';

import { incidentRow, otherFigures, pathNode, renderEventDetails, renderIncident } from '../render';
import { HOSTILE, incident, incidentEvent } from './fixtures';

describe('renderIncident', () => {
  it('shows a hostile command line as text, never as markup', () => {
    const node = renderIncident(incident());
    document.body.appendChild(node);
    expect(node.querySelector('img')).toBeNull();
    const cmdline = node.querySelector('.jp-ColabGuard-cmdline');
    expect(cmdline?.textContent).toContain(HOSTILE);
    expect(node.textContent).toContain(`I was benchmarking ${HOSTILE}`);
    node.remove();
  });

  it('shows the evidence: processes, sockets, figures, matches, actions, appeals', () => {
    const node = renderIncident(incident());
    const text = node.textContent ?? '';
    expect(text).toContain('tcp 127.0.0.1:51234 -> 127.0.0.1:3333 ESTABLISHED');
    expect(text).toContain('98.0'); // CPU %
    expect(text).toContain('GPU 512 MiB'); // a figure without a column, in words
    expect(text).toContain("mining-stratum-url: args matches 'stratum+tcp://'");
    const actions = Array.from(node.querySelectorAll('.jp-ColabGuard-actions tbody tr')).map(
      row => Array.from(row.querySelectorAll('td')).map(td => td.textContent)
    );
    expect(actions).toContainEqual(['stop', 'pid 3184', 'done', 'stopped']);
    expect(node.querySelectorAll('.jp-ColabGuard-appeals tbody tr')).toHaveLength(1);
  });

  it('says when nothing was stopped', () => {
    const node = renderIncident(incident({ dry_run: true }));
    expect(node.textContent).toContain('dry run: nothing was stopped');
  });

  it('copes with an incident without evidence', () => {
    const node = renderIncident(incident({ evidence: undefined, actions: undefined, appeals: undefined }));
    expect(node.textContent).toContain('No processes recorded.');
  });
});

describe('the Other column', () => {
  const process = incident().evidence!.processes![0];

  it('reads as words, not key=value', () => {
    expect(
      otherFigures({ ...process, gpu_percent: 97, gpu_memory_mb: 1536, started: '2026-11-26T09:46:40+00:00' })
    ).toEqual(['GPU 97 %, 1536 MiB', expect.stringMatching(/^started 2026-11-2[67] \d\d:46:40$/)]);
    expect(otherFigures({ ...process, gpu_memory_mb: 0, exe_markers: ['xmrig', 'stratum-miner'] })).toEqual([
      'exe markers: xmrig, stratum-miner'
    ]);
    expect(otherFigures({ ...process, sockets_total: 45 })).toContain('45 sockets, 1 shown');
  });

  it('says nothing of the GPU when the process used none', () => {
    const figures = otherFigures({ ...process, gpu_percent: 0, gpu_memory_mb: 0, sockets_total: 1 });
    expect(figures).toEqual([]);
    const node = renderIncident(
      incident({
        evidence: { processes: [{ ...process, gpu_percent: 0, gpu_memory_mb: 0, sockets_total: 1 }] }
      })
    );
    expect(node.textContent).not.toContain('gpu');
    expect(Array.from(node.querySelectorAll('th')).map(th => th.textContent)).not.toContain('Other');
  });

  it('keeps PIDs whole and breaks paths only after a slash', () => {
    const node = renderIncident(incident());
    const pid = node.querySelector('.jp-ColabGuard-processes tbody td .jp-ColabGuard-nowrap');
    expect(pid?.textContent).toBe('3184');
    const path = pathNode('/home/alice/.cache/kworker');
    expect(path.querySelectorAll('wbr')).toHaveLength(4);
    expect(path.textContent).toBe('/home/alice/.cache/kworker');
  });
});

describe('renderEventDetails', () => {
  it('shows what was detected, where, what was done, and the policy link', () => {
    const node = renderEventDetails(incidentEvent());
    expect(node.querySelector('.jp-ColabGuard-summary')?.textContent).toBe('crypto-mining: xmrig (pid 3184)');
    expect(node.querySelector('.jp-ColabGuard-notebook')?.textContent).toBe('work/analysis.ipynb');
    expect(node.querySelector('.jp-ColabGuard-done')?.textContent).toContain('interrupt kernel: done');
    const link = node.querySelector('a');
    expect(link?.getAttribute('href')).toBe('https://example.org/acceptable-use');
    expect(link?.getAttribute('rel')).toContain('noopener');
  });

  it('shows untrusted summaries as text and drops a javascript: policy link', () => {
    const node = renderEventDetails(
      incidentEvent({ summary: HOSTILE, notebook: HOSTILE, policy_url: 'javascript:alert(1)' })
    );
    expect(node.querySelector('img')).toBeNull();
    expect(node.querySelector('a')).toBeNull();
    expect(node.querySelector('.jp-ColabGuard-summary')?.textContent).toBe(HOSTILE);
  });
});

describe('incidentRow', () => {
  it('lists the actions taken, not the record', () => {
    const row = incidentRow(incident());
    expect(row).toContain('interrupt: done, stop: done');
    expect(row[row.length - 1]).toBe('1');
  });
});

describe('a refused cell', () => {
  it('shows the cell as text, and what matched with its line', () => {
    const source = `!./xmrig -o stratum+tcp://pool:3333 ${HOSTILE}\nprint('done')`;
    const node = renderIncident(
      incident({
        evidence: {
          matches: [{ signature: 'mining-known-miner', reasons: ['line 1: the cell would start: ./xmrig'] }],
          cell: {
            source,
            findings: [
              { signature: 'mining-known-miner', line: 1, text: 'the cell would start: ./xmrig' }
            ]
          }
        },
        actions: [{ action: 'refuse', target: 'cell', outcome: 'done' }]
      })
    );
    document.body.appendChild(node);
    expect(node.querySelector('img')).toBeNull();
    expect(node.querySelector('.jp-ColabGuard-cell-source')?.textContent).toBe(source);
    expect(node.querySelector('.jp-ColabGuard-findings')?.textContent).toContain(
      'line 1: the cell would start: ./xmrig (mining-known-miner)'
    );
    expect(node.textContent).not.toContain('No processes recorded.');
    node.remove();
  });
});

describe('fair strikes', () => {
  const pkg = { name: 'ultralytics', version: '8.3.41', path: '/venv/bin/<b>yolo</b>' };

  it('names the package an incident came from, as text, and says it is no strike', () => {
    const node = renderIncident(incident({ strike: false, package: pkg }));
    const strike = node.querySelector('.jp-ColabGuard-strike');
    expect(strike?.textContent).toBe(
      'no: the program came from the installed package ultralytics 8.3.41 (/venv/bin/<b>yolo</b>)'
    );
    expect(node.querySelector('b')).toBeNull();
  });

  it('says yes for a strike, and shows the package in the event dialog', () => {
    expect(renderIncident(incident({ strike: true })).querySelector('.jp-ColabGuard-strike')?.textContent).toBe('yes');
    const details = renderEventDetails(incidentEvent({ package: pkg, strike: false }));
    expect(details.textContent).toContain('installed package ultralytics 8.3.41');
    expect(renderEventDetails(incidentEvent()).querySelector('.jp-ColabGuard-strike')).toBeNull();
  });
});

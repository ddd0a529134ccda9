import { describe, expect, it } from 'vitest';

import { incidentRow, renderEventDetails, renderIncident } from '../render';
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
    expect(text).toContain('gpu_memory_mb=512'); // a figure without a column
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

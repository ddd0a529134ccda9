import { IIncident, IIncidentEvent } from '../types';

export const HOSTILE = '<img src=x onerror=alert(1)>';

export function incidentEvent(overrides: Partial<IIncidentEvent> = {}): IIncidentEvent {
  return {
    incident_id: 'inc-1',
    kernel_id: 'k-1',
    notebook: 'work/analysis.ipynb',
    user: 'alice',
    category: 'crypto-mining',
    severity: 'high',
    signature: 'mining-stratum-url',
    summary: 'crypto-mining: xmrig (pid 3184)',
    action: 'interrupt',
    outcomes: [
      { action: 'interrupt', target: 'kernel', outcome: 'done' },
      { action: 'stop', target: 'pid 3184', outcome: 'done' }
    ],
    dry_run: false,
    message: 'Mining is not allowed here.',
    policy_url: 'https://example.org/acceptable-use',
    ...overrides
  };
}

export function incident(overrides: Partial<IIncident> = {}): IIncident {
  return {
    id: 'inc-1',
    time: '2026-11-26T09:46:42.593+00:00',
    kernel_id: 'k-1',
    notebook: 'work/analysis.ipynb',
    user: 'alice',
    category: 'crypto-mining',
    severity: 'high',
    signature: 'mining-stratum-url',
    signatures: ['mining-stratum-url', 'mining-wallet-login'],
    description: 'A program that talks to the network was given a Stratum mining-pool URL.',
    summary: 'crypto-mining: xmrig (pid 3184)',
    evidence: {
      processes: [
        {
          pid: 3184,
          ppid: 3101,
          name: 'xmrig',
          exe: '/tmp/xmrig',
          cmdline: `./xmrig -o stratum+tcp://127.0.0.1:3333 ${HOSTILE}`,
          cpu_percent: 98.04,
          rss_mb: 12.1,
          threads: 3,
          is_kernel: false,
          sockets: ['tcp 127.0.0.1:51234 -> 127.0.0.1:3333 ESTABLISHED'],
          gpu_memory_mb: 512
        }
      ],
      matches: [{ signature: 'mining-stratum-url', reasons: ["args matches 'stratum+tcp://'"] }]
    },
    dry_run: false,
    status: 'done',
    actions: [
      { action: 'record', target: 'incident log', outcome: 'done', detail: '' },
      { action: 'interrupt', target: 'kernel', outcome: 'done', detail: '' },
      { action: 'stop', target: 'pid 3184', outcome: 'done', detail: 'stopped' }
    ],
    appeals: [
      {
        id: 'ap-1',
        incident_id: 'inc-1',
        user: 'alice',
        text: `I was benchmarking ${HOSTILE}`,
        time: '2026-11-26T10:00:00+00:00',
        status: 'open',
        reply: null
      }
    ],
    ...overrides
  };
}

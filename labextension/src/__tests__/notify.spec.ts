import { afterEach, describe, expect, it, vi } from 'vitest';

// @jupyterlab/apputils does not load outside a browser build: a stand-in for its
// Notification API (emit, update, dismiss, the manager), the part the notifier uses.
vi.mock('@jupyterlab/apputils', () => {
  type Shown = { id: string; message: string; type: string; options: any };
  let shown: Shown[] = [];
  let next = 0;
  const Notification = {
    manager: {
      has: (id: string) => shown.some(n => n.id === id),
      get notifications() {
        return shown;
      }
    },
    emit: (message: string, type: string, options: any) => {
      const id = `n${++next}`;
      shown.push({ id, message, type, options });
      return id;
    },
    update: (args: any) => {
      const found = shown.find(n => n.id === args.id);
      if (!found) {
        return false;
      }
      const { id: _id, message, type, ...options } = args;
      Object.assign(found, { message, type, options });
      return true;
    },
    dismiss: (id?: string) => {
      shown = id ? shown.filter(n => n.id !== id) : [];
    },
    success: () => 'ok',
    error: () => 'error'
  };
  return { Notification, Dialog: {}, showDialog: async () => ({ button: { accept: false } }) };
});

import { Notification } from '@jupyterlab/apputils';

import { IGuardAPI } from '../api';
import { IncidentNotifier } from '../notify';
import { incidentEvent } from './fixtures';

const api = {} as IGuardAPI; // no request is made by these tests

afterEach(() => {
  Notification.dismiss();
});

describe('IncidentNotifier', () => {
  it('shows one notification, replaced with the count and the latest, not three stacked', () => {
    const notifier = new IncidentNotifier(api, { openMine: () => undefined });
    expect(notifier.handle(incidentEvent({ incident_id: 'a' }))).toBe(true);
    expect(notifier.handle(incidentEvent({ incident_id: 'b', summary: 'torrenting: rtorrent (pid 7)' }))).toBe(true);
    expect(notifier.handle(incidentEvent({ incident_id: 'c', summary: 'password-cracking: john (pid 8)' }))).toBe(true);
    expect(notifier.handle(incidentEvent({ incident_id: 'c' }))).toBe(false); // once per incident
    const shown = Notification.manager.notifications;
    expect(shown).toHaveLength(1);
    expect(shown[0].message).toBe(
      '3 incidents. Latest: Stopped password-cracking: john (pid 8). Mining is not allowed here.'
    );
    expect(shown[0].options.actions?.map(a => a.label)).toEqual(['Details', 'My incidents']);
  });

  it('tells an incident again when a stronger action is carried out in it, as one incident', () => {
    const notifier = new IncidentNotifier(api);
    const summary = 'remote-access: the kernel itself';
    expect(notifier.handle(incidentEvent({ incident_id: 'a', summary }))).toBe(true);
    expect(notifier.handle(incidentEvent({ incident_id: 'a', summary, action: 'shutdown' }))).toBe(true);
    expect(notifier.handle(incidentEvent({ incident_id: 'a', summary, action: 'shutdown' }))).toBe(false);
    expect(notifier.handle(incidentEvent({ incident_id: 'a', summary }))).toBe(false);
    expect(Notification.manager.notifications.map(n => n.message)).toEqual([
      'Stopped, kernel shut down: remote-access: the kernel itself. Mining is not allowed here.'
    ]);
  });

  it('starts a new notification once the last one was dismissed', () => {
    const notifier = new IncidentNotifier(api);
    notifier.handle(incidentEvent({ incident_id: 'a' }));
    Notification.dismiss();
    notifier.handle(incidentEvent({ incident_id: 'b' }));
    expect(Notification.manager.notifications.map(n => n.message)).toEqual([
      'Stopped crypto-mining: xmrig (pid 3184). Mining is not allowed here.'
    ]);
  });

  it('warns once at 2 of 3 strikes, and replaces that warning at the limit', () => {
    const notifier = new IncidentNotifier(api, { openMine: () => undefined });
    const status = { enabled: true, dry_run: false, strike_limit: 3 };
    expect(notifier.handleStatus({ ...status, strikes: 1 })).toBe(false);
    expect(notifier.handleStatus({ ...status, strikes: 2 })).toBe(true);
    expect(notifier.handleStatus({ ...status, strikes: 2 })).toBe(false);
    expect(Notification.manager.notifications[0].message).toContain('2 of 3 strikes. One more');
    expect(notifier.handleStatus({ ...status, strikes: 3 })).toBe(true);
    const shown = Notification.manager.notifications;
    expect(shown).toHaveLength(1);
    expect(shown[0].type).toBe('error');
    expect(shown[0].message).toContain('3 of 3 strikes: new kernels are refused');
  });
});

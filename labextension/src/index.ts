/**
 * colab-guard in JupyterLab and Notebook 7: the warning when the guard acts
 * (from the server's event bus, no polling), the status bar item, and the
 * incident panel (every user's incidents for admins, one's own otherwise).
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { Event } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { GuardAPI } from './api';
import { eventFromIncident, incidentFromEvent, missedIncidents } from './logic';
import { IncidentNotifier } from './notify';
import { IncidentPanel, IPanelActions } from './panel';
import { GuardStatusItem } from './status';
import { IStatus } from './types';

const PLUGIN_ID = 'colab-guard:plugin';

export const CommandIDs = {
  openIncidents: 'colab-guard:open-incidents',
  openMyIncidents: 'colab-guard:open-my-incidents'
};

const shieldIcon = new LabIcon({
  name: 'colab-guard:shield',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M12 2 4 5v6c0 5 3.4 9.7 8 11 ' +
    '4.6-1.3 8-6 8-11V5l-8-3zm0 2.2 6 2.2V11c0 3.9-2.5 7.6-6 8.8-3.5-1.2-6-4.9-6-8.8V6.4l6-2.2z"/></svg>'
});

function activate(
  app: JupyterFrontEnd,
  statusBar: IStatusBar | null,
  palette: ICommandPalette | null,
  launcher: ILauncher | null
): void {
  const api = new GuardAPI(app.serviceManager.serverSettings);
  const notifier = new IncidentNotifier(api, {
    openMine: () => void app.commands.execute(CommandIDs.openMyIncidents)
  });
  const seen = new Set<string>();
  let eventsBeforeStatus = 0;
  const panels = new Map<string, MainAreaWidget<IncidentPanel>>();
  let status: IStatus | null = null;

  const statusItem = new GuardStatusItem(() => {
    void app.commands.execute(CommandIDs.openMyIncidents);
  });
  // The server counts this session's incidents; each new incident event asks it again.
  const showCount = () =>
    statusItem.setStatus(status, status?.incidents_this_session ?? eventsBeforeStatus);
  const refreshStatus = () =>
    api
      .status()
      .then(answer => {
        status = answer;
        showCount();
        notifier.handleStatus(answer); // "2 of 3 strikes" before the limit; the refusal at it
      })
      .catch(error => {
        console.warn('colab-guard: status unavailable', error);
        showCount();
      });

  const actions: IPanelActions = {
    appeal: incident => notifier.showDetails(eventFromIncident(incident, status)),
    resolve: (appeal, what, decision) => notifier.resolveAppeal(appeal, what, decision),
    clearStrikes: async (user, count) => {
      const done = await notifier.clearStrikes(user, count);
      if (done) {
        void refreshStatus();
      }
      return done;
    }
  };

  const openPanel = (key: string, onlyUser: string | undefined) => {
    let widget = panels.get(key);
    if (!widget || widget.isDisposed) {
      const content = new IncidentPanel({
        api,
        onlyUser,
        user: () => status?.user,
        categories: () => status?.categories,
        admin: () => status?.admin === true,
        actions
      });
      widget = new MainAreaWidget({ content });
      widget.id = `colab-guard-${key}`;
      widget.title.icon = shieldIcon;
      panels.set(key, widget);
    }
    if (!widget.isAttached) {
      app.shell.add(widget, 'main');
      if (!widget.isAttached) {
        // Notebook 7's notebook page holds one document in its main area.
        app.shell.add(widget, 'right');
      }
    }
    app.shell.activateById(widget.id);
    void widget.content.refresh();
  };

  app.commands.addCommand(CommandIDs.openMyIncidents, {
    label: 'My colab-guard incidents',
    caption: 'The incidents colab-guard recorded on your kernels',
    icon: shieldIcon,
    // The server shows a user only their own incidents; an admin, who may read everyone's,
    // asks for their own by name (status.user: on a server with anonymous logins, its owner).
    execute: () => openPanel('mine', status?.user ?? '')
  });
  app.commands.addCommand(CommandIDs.openIncidents, {
    label: 'colab-guard Incidents',
    caption: 'Every incident colab-guard recorded, with its evidence (admins)',
    icon: shieldIcon,
    isEnabled: () => status?.admin === true,
    execute: () => openPanel('all', undefined)
  });

  if (statusBar) {
    statusBar.registerStatusItem(PLUGIN_ID, {
      item: statusItem,
      align: 'left',
      rank: 50
    });
  }

  app.serviceManager.events.stream.connect((_, event: Event.Emission) => {
    const incident = incidentFromEvent(event);
    if (!incident) {
      return;
    }
    if (!seen.has(incident.incident_id)) {
      seen.add(incident.incident_id);
      eventsBeforeStatus += 1;
      void refreshStatus();
    }
    notifier.handle(incident);
    for (const widget of panels.values()) {
      if (!widget.isDisposed && widget.isAttached) {
        void widget.content.refresh();
      }
    }
  });

  // What the node watcher did while no server of the user listened: told once Lab loads.
  const showMissed = async () => {
    for (const id of missedIncidents(status, seen)) {
      seen.add(id);
      try {
        notifier.handle(eventFromIncident(await api.incident(id), status));
      } catch (error) {
        console.warn('colab-guard: incident unavailable', error);
      }
    }
  };

  void refreshStatus().then(() => {
    void showMissed();
    if (status?.admin) {
      palette?.addItem({ command: CommandIDs.openIncidents, category: 'colab-guard' });
      launcher?.add({ command: CommandIDs.openIncidents, category: 'Other', rank: 90 });
    }
    app.commands.notifyCommandChanged(CommandIDs.openIncidents);
  });
  palette?.addItem({ command: CommandIDs.openMyIncidents, category: 'colab-guard' });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'colab-guard: warnings, status and incident panel.',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, ILauncher],
  activate
};

export default plugin;

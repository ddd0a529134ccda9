/**
 * Telling the user: a notification that stays until dismissed, its "Details"
 * dialog, and the appeal sent from that dialog.
 */

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IGuardAPI } from './api';
import { h } from './dom';
import {
  APPEAL_MAX_LENGTH,
  appealProblem,
  detailsTitle,
  notificationText,
  shouldNotify
} from './logic';
import { renderEventDetails } from './render';
import { IIncidentEvent } from './types';

/** The dialog's body: the incident's details and a box for the user's explanation. */
class DetailsBody extends Widget implements Dialog.IBodyWidget<string> {
  constructor(incident: IIncidentEvent, draft: string, problem: string | null) {
    super();
    this.addClass('jp-ColabGuard-dialog');
    this.textarea = h('textarea', {
      class: 'jp-ColabGuard-appeal-text',
      rows: '4',
      maxlength: String(APPEAL_MAX_LENGTH),
      placeholder: 'If this was a mistake, explain briefly what you were doing.'
    });
    this.textarea.value = draft;
    this.node.append(
      renderEventDetails(incident),
      h('label', { class: 'jp-ColabGuard-appeal-label' }, 'Appeal: your explanation for the admins'),
      this.textarea,
      problem ? h('p', { class: 'jp-ColabGuard-appeal-problem' }, problem) : ''
    );
  }

  getValue(): string {
    return this.textarea.value;
  }

  private readonly textarea: HTMLTextAreaElement;
}

export class IncidentNotifier {
  constructor(private readonly api: IGuardAPI) {}

  /** Notify the user of an incident once; false when there is nothing to tell. */
  handle(incident: IIncidentEvent): boolean {
    if (!shouldNotify(incident) || this.notified.has(incident.incident_id)) {
      return false;
    }
    this.notified.add(incident.incident_id);
    Notification.emit(notificationText(incident), incident.dry_run ? 'info' : 'warning', {
      autoClose: false,
      actions: [
        {
          label: 'Details',
          caption: 'What was detected, what was done, and how to appeal',
          callback: event => {
            event.preventDefault(); // the notification stays until dismissed
            void this.showDetails(incident);
          }
        }
      ]
    });
    return true;
  }

  /** The details dialog; "Appeal" sends the explanation, reopening on a problem. */
  async showDetails(incident: IIncidentEvent): Promise<void> {
    let draft = '';
    let problem: string | null = null;
    for (;;) {
      const result = await showDialog({
        title: detailsTitle(incident),
        body: new DetailsBody(incident, draft, problem),
        buttons: [
          Dialog.cancelButton({ label: 'Close' }),
          Dialog.okButton({ label: 'Appeal', caption: 'Send your explanation to the admins' })
        ],
        focusNodeSelector: 'textarea'
      });
      if (!result.button.accept) {
        return;
      }
      draft = result.value ?? '';
      problem = appealProblem(draft);
      if (problem) {
        continue;
      }
      try {
        await this.api.appeal(incident.incident_id, draft.trim());
        Notification.success('Your appeal was sent to the admins.', { autoClose: 5000 });
        return;
      } catch (error) {
        problem = `The appeal could not be sent: ${(error as Error).message}`;
      }
    }
  }

  private readonly notified = new Set<string>();
}

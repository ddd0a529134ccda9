/**
 * Telling the user: a notification that stays until dismissed (one at a time: a new incident
 * replaces the text of the one shown, with the count), its "Details" dialog and the appeal
 * sent from it, the warning before the strike limit, and the admins' dialogs (resolving an
 * appeal, clearing strikes).
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
  replyProblem,
  shouldNotify,
  strikeWarning,
  stronger
} from './logic';
import { renderEventDetails } from './render';
import { AppealDecision, IAppeal, IIncidentEvent, IStatus } from './types';

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

/** The admin's dialog body: the appeal, and a box for the reply to the user. */
class ResolveBody extends Widget implements Dialog.IBodyWidget<string> {
  constructor(appeal: IAppeal, what: string, decision: AppealDecision, draft: string, problem: string | null) {
    super();
    this.addClass('jp-ColabGuard-dialog');
    this.textarea = h('textarea', {
      class: 'jp-ColabGuard-reply-text',
      rows: '3',
      maxlength: String(APPEAL_MAX_LENGTH),
      placeholder: 'Optional: a reply the user will see with the decision.'
    });
    this.textarea.value = draft;
    this.node.append(
      h(
        'dl',
        { class: 'jp-ColabGuard-details' },
        h('dt', {}, 'Incident'),
        h('dd', {}, what),
        h('dt', {}, `${appeal.user} wrote`),
        h('dd', { class: 'jp-ColabGuard-appeal-quote' }, appeal.text)
      ),
      h(
        'p',
        {},
        decision === 'accept'
          ? 'Accepting removes the strike this incident counts against the user.'
          : 'Rejecting keeps the strike; the user may appeal again.'
      ),
      h('label', { class: 'jp-ColabGuard-appeal-label' }, 'Reply to the user'),
      this.textarea,
      problem ? h('p', { class: 'jp-ColabGuard-appeal-problem' }, problem) : ''
    );
  }

  getValue(): string {
    return this.textarea.value;
  }

  private readonly textarea: HTMLTextAreaElement;
}

export interface INotifierOptions {
  /** Opens the user's own incidents (a button of the notifications). */
  openMine?: () => void;
}

export class IncidentNotifier {
  constructor(
    private readonly api: IGuardAPI,
    private readonly options: INotifierOptions = {}
  ) {}

  /**
   * Notify the user of an incident once; false when there is nothing to tell. While the
   * notification of an earlier incident is shown, it is updated (count and latest) rather
   * than a second one stacked over the notebook.
   */
  handle(incident: IIncidentEvent): boolean {
    const told = this.notified.get(incident.incident_id);
    if (!shouldNotify(incident) || (told !== undefined && !stronger(incident.action, told))) {
      return false;
    }
    // An incident told again carries a stronger action (a kernel shut down after its
    // interrupt did not end the offence): the same incident, not one more. A weaker one
    // arriving late (the interrupt's completion) is not told over it.
    this.notified.set(incident.incident_id, incident.action);
    const shown = this.current !== null && Notification.manager.has(this.current.id);
    const count = shown ? this.current!.count + (told === undefined ? 1 : 0) : 1;
    const message = notificationText(incident, count);
    const type = incident.dry_run ? 'info' : 'warning';
    const options = { autoClose: false as const, actions: this.incidentActions(incident) };
    if (shown && Notification.update({ id: this.current!.id, message, type, ...options })) {
      this.current = { id: this.current!.id, count };
    } else {
      this.current = { id: Notification.emit(message, type, options), count: 1 };
    }
    return true;
  }

  /** Warn once per strike count, before the limit, and explain the refusal at it. */
  handleStatus(status: IStatus | null): boolean {
    const warning = strikeWarning(status);
    if (!warning || warning.key === this.strikeKey) {
      return false;
    }
    this.strikeKey = warning.key;
    const options = {
      autoClose: false as const,
      actions: this.options.openMine
        ? [
            {
              label: 'My incidents',
              caption: 'Your incidents; appeal one that was a mistake',
              callback: () => this.options.openMine?.()
            }
          ]
        : []
    };
    if (this.strikeId && Notification.manager.has(this.strikeId)) {
      Notification.update({ id: this.strikeId, message: warning.text, type: warning.type, ...options });
    } else {
      this.strikeId = Notification.emit(warning.text, warning.type, options);
    }
    return true;
  }

  private incidentActions(incident: IIncidentEvent): Notification.IAction[] {
    const actions: Notification.IAction[] = [
      {
        label: 'Details',
        caption: 'What was detected, what was done, and how to appeal',
        callback: event => {
          event.preventDefault(); // the notification stays until dismissed
          void this.showDetails(incident);
        }
      }
    ];
    if (this.options.openMine) {
      actions.push({
        label: 'My incidents',
        caption: 'All your incidents, with their appeals',
        callback: () => this.options.openMine?.()
      });
    }
    return actions;
  }

  /** The details dialog; "Appeal" sends the explanation, reopening on a problem. True once sent. */
  async showDetails(incident: IIncidentEvent): Promise<boolean> {
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
        return false;
      }
      draft = result.value ?? '';
      problem = appealProblem(draft);
      if (problem) {
        continue;
      }
      try {
        await this.api.appeal(incident.incident_id, draft.trim());
        Notification.success('Your appeal was sent to the admins.', { autoClose: 5000 });
        return true;
      } catch (error) {
        problem = `The appeal could not be sent: ${(error as Error).message}`;
      }
    }
  }

  /** Admins: accept or reject an appeal with a reply. True once resolved. */
  async resolveAppeal(appeal: IAppeal, what: string, decision: AppealDecision): Promise<boolean> {
    let draft = '';
    let problem: string | null = null;
    const verb = decision === 'accept' ? 'Accept' : 'Reject';
    for (;;) {
      const result = await showDialog({
        title: `${verb} ${appeal.user}'s appeal`,
        body: new ResolveBody(appeal, what, decision, draft, problem),
        buttons: [
          Dialog.cancelButton({ label: 'Cancel' }),
          decision === 'accept'
            ? Dialog.okButton({ label: 'Accept', caption: 'Accept the appeal: the strike is removed' })
            : Dialog.warnButton({ label: 'Reject', caption: 'Reject the appeal: the strike stays' })
        ],
        focusNodeSelector: 'textarea'
      });
      if (!result.button.accept) {
        return false;
      }
      draft = result.value ?? '';
      problem = replyProblem(draft);
      if (problem) {
        continue;
      }
      try {
        await this.api.resolveAppeal(appeal.id, decision, draft.trim());
        Notification.success(
          `The appeal was ${decision === 'accept' ? 'accepted' : 'rejected'}; ${appeal.user} sees your reply.`,
          { autoClose: 5000 }
        );
        return true;
      } catch (error) {
        problem = `The appeal could not be resolved: ${(error as Error).message}`;
      }
    }
  }

  /** Admins: clear a user's strikes, after a confirmation. True once cleared. */
  async clearStrikes(user: string, count: number): Promise<boolean> {
    const result = await showDialog({
      title: `Clear ${user}'s strikes`,
      body: new Widget({
        node: h(
          'p',
          { class: 'jp-ColabGuard-dialog' },
          `Clear the ${count} ${count === 1 ? 'strike' : 'strikes'} in force against ${user}? ` +
            `${user} can start kernels again; the incidents stay recorded.`
        )
      }),
      buttons: [
        Dialog.cancelButton({ label: 'Cancel' }),
        Dialog.warnButton({ label: 'Clear strikes' })
      ]
    });
    if (!result.button.accept) {
      return false;
    }
    try {
      const cleared = await this.api.clearStrikes(user);
      Notification.success(`${cleared} ${cleared === 1 ? 'strike' : 'strikes'} of ${user} cleared.`, {
        autoClose: 5000
      });
      return true;
    } catch (error) {
      Notification.error(`The strikes could not be cleared: ${(error as Error).message}`, {
        autoClose: false
      });
      return false;
    }
  }

  private readonly notified = new Map<string, string>(); // incident id -> action told
  private current: { id: string; count: number } | null = null;
  private strikeId: string | null = null;
  private strikeKey: string | null = null;
}

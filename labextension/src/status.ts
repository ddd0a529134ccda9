/** The status bar item: the guard's state and this session's incident count. */

import { Widget } from '@lumino/widgets';

import { guardState, statusBarText } from './logic';
import { IStatus } from './types';

export class GuardStatusItem extends Widget {
  constructor(onClick: () => void) {
    super();
    this.addClass('jp-ColabGuard-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        onClick();
      }
    });
    this.render();
  }

  setStatus(status: IStatus | null, incidents: number): void {
    this.status = status;
    this.incidents = incidents;
    this.render();
  }

  private render(): void {
    const { text, title } = statusBarText(this.status, this.incidents);
    this.node.textContent = text;
    this.node.title = title;
    this.node.dataset.state = guardState(this.status);
  }

  private status: IStatus | null = null;
  private incidents = 0;
}

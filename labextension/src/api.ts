/**
 * The colab-guard REST API (/colab-guard/api/...), through the server's own
 * connection settings (ServerConnection adds the token and the XSRF header).
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { incidentsQuery } from './logic';
import {
  AppealDecision,
  IAppeal,
  IIncident,
  IIncidentFilters,
  IStatus,
  IStrikes
} from './types';

export interface IGuardAPI {
  status(): Promise<IStatus>;
  incidents(filters: IIncidentFilters): Promise<IIncident[]>;
  incident(id: string): Promise<IIncident>;
  appeal(id: string, text: string): Promise<IAppeal>;
  /** Appeals, newest first: one's own, or everyone's for admins. */
  appeals(status?: 'pending' | 'accepted' | 'rejected'): Promise<IAppeal[]>;
  /** Admins: accept (removes the incident's strike) or reject an appeal, with a reply. */
  resolveAppeal(id: string, decision: AppealDecision, reply: string): Promise<IAppeal>;
  /** Strikes in force: one's own, or everyone's for admins. */
  strikes(): Promise<IStrikes>;
  /** Admins: clear every strike against a user; the number cleared. */
  clearStrikes(user: string): Promise<number>;
}

export class GuardAPI implements IGuardAPI {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  status(): Promise<IStatus> {
    return this.request<IStatus>('status');
  }

  async incidents(filters: IIncidentFilters): Promise<IIncident[]> {
    const answer = await this.request<{ incidents: IIncident[] }>(
      `incidents${incidentsQuery(filters)}`
    );
    return answer.incidents;
  }

  incident(id: string): Promise<IIncident> {
    return this.request<IIncident>(`incidents/${encodeURIComponent(id)}`);
  }

  async appeal(id: string, text: string): Promise<IAppeal> {
    const answer = await this.request<{ appeal: IAppeal }>(
      `incidents/${encodeURIComponent(id)}/appeal`,
      { method: 'POST', body: JSON.stringify({ text }) }
    );
    return answer.appeal;
  }

  async appeals(status?: 'pending' | 'accepted' | 'rejected'): Promise<IAppeal[]> {
    const query = status ? `?status=${encodeURIComponent(status)}` : '';
    const answer = await this.request<{ appeals: IAppeal[] }>(`appeals${query}`);
    return answer.appeals;
  }

  async resolveAppeal(id: string, decision: AppealDecision, reply: string): Promise<IAppeal> {
    const answer = await this.request<{ appeal: IAppeal }>(
      `appeals/${encodeURIComponent(id)}/resolve`,
      { method: 'POST', body: JSON.stringify({ decision, reply }) }
    );
    return answer.appeal;
  }

  strikes(): Promise<IStrikes> {
    return this.request<IStrikes>('strikes');
  }

  async clearStrikes(user: string): Promise<number> {
    const answer = await this.request<{ cleared: number }>(
      `strikes/${encodeURIComponent(user)}/clear`,
      { method: 'POST', body: '{}' }
    );
    return answer.cleared;
  }

  private async request<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'colab-guard', 'api', endpoint);
    const response = await ServerConnection.makeRequest(url, init, this.settings);
    const body = await response.text();
    let data: any = null;
    try {
      data = body ? JSON.parse(body) : null;
    } catch {
      // Not JSON (a proxy's error page): the status says enough.
    }
    if (!response.ok) {
      const reason = data?.message || data?.reason || response.statusText;
      throw new ServerConnection.ResponseError(
        response,
        `colab-guard ${endpoint.split('?')[0]}: ${response.status} ${reason}`
      );
    }
    return data as T;
  }
}

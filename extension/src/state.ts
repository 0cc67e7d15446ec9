/**
 * What the sidebar shows, kept fresh by one Lumino `Poll`.
 *
 * The poll runs while the sidebar is visible (and the browser tab too), backs
 * off on errors up to `max` and returns to `interval` after the first success;
 * hidden, it stands by and asks the server nothing.  Launches are followed by
 * long-polling the model's record (`?version=N&wait=S`), so progress shows as
 * soon as it happens without a faster poll.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import {
  ClusterRecord, LaunchOptions, ModelRecord, ReplicaInfo, XnbApi, XnbApiError
} from './api';

export interface StoreOptions {
  /** Milliseconds between polls while all is well (default 3000). */
  interval?: number;
  /** Longest wait between polls after repeated errors (default 60000). */
  max?: number;
  /** How long one launch long-poll may wait on the server, seconds (default 10). */
  watchWait?: number;
}

/** A launch started from this page: its record as it progresses, or the error that stopped it. */
export interface LaunchState {
  uid: string | null;
  options: LaunchOptions;
  record: ModelRecord | null;
  error: XnbApiError | null;
  done: boolean;
}

/** Requests served, requests in flight or queued, and generation speed over the last poll. */
export interface LiveCounters {
  requests: number;
  inflight: number;
  queued: number;
  tokens: number;
  tokensPerSecond: number | null;
}

function sum(infos: ReplicaInfo[], pick: (i: ReplicaInfo) => unknown): number {
  return infos.reduce((total, i) => total + (Number(pick(i)) || 0), 0);
}

/**
 * Per-model counters from the replicas' reports; tokens/s is the growth of
 * generated tokens since the previous report (`elapsedMs` ago), null on the first.
 */
export function liveCounters(now: Map<string, ReplicaInfo[]>, before: Map<string, ReplicaInfo[]>,
                             previous: Map<string, LiveCounters>, elapsedMs: number): Map<string, LiveCounters> {
  const out = new Map<string, LiveCounters>();
  for (const [uid, infos] of now) {
    const tokens = sum(infos, i => i.engine?.tokens_generated);
    const prev = before.has(uid) ? previous.get(uid) : undefined;
    const grown = prev !== undefined && tokens >= prev.tokens && elapsedMs > 0;
    out.set(uid, {
      requests: sum(infos, i => i.counters?.requests) + sum(infos, i => i.counters?.embed_requests),
      inflight: sum(infos, i => i.inflight),
      queued: sum(infos, i => i.engine?.waiting),
      tokens,
      tokensPerSecond: grown ? (tokens - prev!.tokens) / (elapsedMs / 1000) : null
    });
  }
  return out;
}

const END = new Set(['ready', 'error', 'lost', 'stopped', 'degraded']);

export class XnbStore {
  readonly api: XnbApi;
  models: ModelRecord[] = [];
  cluster: ClusterRecord | null = null;
  /** Live counters of the ready models' replicas, by uid. */
  replicaInfo = new Map<string, ReplicaInfo[]>();
  /** Live per-model numbers derived from the counters, by uid. */
  live = new Map<string, LiveCounters>();
  /** The last error of a poll (cleared by the next success). */
  error: XnbApiError | null = null;
  /** Consecutive failed polls. */
  failures = 0;
  /** Time of the last successful poll (ms since the epoch), 0 before the first. */
  updated = 0;
  readonly launches = new Map<string, LaunchState>();
  readonly poll: Poll;

  private _visible = false;
  private _changed = new Signal<this, void>(this);
  private _watchWait: number;
  private _disposed = false;

  constructor(api: XnbApi, options: StoreOptions = {}) {
    this.api = api;
    this._watchWait = options.watchWait ?? 10;
    const interval = options.interval ?? 3000;
    this.poll = new Poll({
      auto: false,
      factory: () => this.refresh(),
      frequency: { interval, backoff: true, max: options.max ?? 60_000 },
      // Hidden sidebar: ask nothing; visible sidebar in a hidden browser tab: ask nothing either.
      standby: () => (this._visible ? 'when-hidden' : true),
      name: 'xnb:sidebar'
    });
    // The constructor raises `max` to at least 30 s; the setter takes ours as given.
    this.poll.frequency = { interval, backoff: true, max: Math.max(interval, options.max ?? 60_000) };
  }

  /** Emitted after every poll (success or failure) and every launch update. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get visible(): boolean {
    return this._visible;
  }

  /** Show or hide: visible starts (or wakes) the poll at once; hidden makes it stand by. */
  set visible(value: boolean) {
    if (value === this._visible) {
      return;
    }
    this._visible = value;
    if (value) {
      void (this.poll.isDisposed ? undefined : this.poll.start().then(() => this.poll.refresh()));
    }
  }

  /** How many models are ready (the status bar's number). */
  get readyCount(): number {
    return this.models.filter(m => m.status === 'ready' || m.status === 'degraded').length;
  }

  /** One round: models and cluster, then counters of ready models. Rejects (and records) errors. */
  async refresh(): Promise<void> {
    try {
      const [models, cluster] = await Promise.all([this.api.models(), this.api.cluster()]);
      this.models = models;
      this.cluster = cluster;
      const info = new Map<string, ReplicaInfo[]>();
      await Promise.all(models.filter(m => m.replicas_ready > 0).map(async m => {
        try {
          info.set(m.uid, await this.api.replicas(m.uid));
        } catch (err) {
          // Counters are optional (an older server has no replicas route; a model may be going away).
          if (!(err instanceof XnbApiError)) {
            throw err;
          }
        }
      }));
      this.live = liveCounters(info, this.replicaInfo, this.live, Date.now() - this.updated);
      this.replicaInfo = info;
      this.error = null;
      this.failures = 0;
      this.updated = Date.now();
    } catch (err) {
      this.error = err instanceof XnbApiError ? err : new XnbApiError(0, String(err));
      this.failures += 1;
      throw this.error; // the poll backs off
    } finally {
      this._changed.emit();
    }
  }

  /** Models only (the status bar's count while the sidebar is hidden); errors are kept, not thrown. */
  async refreshModels(): Promise<void> {
    try {
      this.models = await this.api.models();
      this.updated = this.updated || Date.now();
    } catch (err) {
      this.error = err instanceof XnbApiError ? err : new XnbApiError(0, String(err));
    }
    this._changed.emit();
  }

  /** Refresh now (a button, or after an action), without waiting for the next tick. */
  async refreshNow(): Promise<void> {
    if (this.poll.isDisposed) {
      return;
    }
    await this.poll.refresh();
    await this.poll.tick.catch(() => undefined);
  }

  /**
   * Launch a model and follow it to an end state, updating `launches` (and
   * emitting `changed`) at each step.  Resolves with the final state; never rejects.
   */
  async launch(key: string, options: LaunchOptions): Promise<LaunchState> {
    const state: LaunchState = { uid: options.uid ?? null, options, record: null, error: null, done: false };
    this.launches.set(key, state);
    this._changed.emit();
    try {
      let record: ModelRecord = await this.api.launch(options);
      state.uid = record.uid;
      state.record = record;
      this._changed.emit();
      while (!END.has(record.status) && !this._disposed) {
        record = await this.api.model(record.uid, record.version, this._watchWait);
        state.record = record;
        this._changed.emit();
      }
      if (record.status === 'error' || record.status === 'lost') {
        state.error = new XnbApiError(500, record.last_error ?? `${record.uid} ended ${record.status}`,
                                      'launch_error');
      }
    } catch (err) {
      state.error = err instanceof XnbApiError ? err : new XnbApiError(0, String(err));
    }
    state.done = true;
    this._changed.emit();
    void this.refreshNow();
    return state;
  }

  async terminate(uid: string): Promise<void> {
    await this.api.terminate(uid);
    await this.refreshNow();
  }

  async scale(uid: string, replicas: number): Promise<void> {
    await this.api.scale(uid, replicas);
    await this.refreshNow();
  }

  dispose(): void {
    this._disposed = true;
    this.poll.dispose();
    Signal.clearData(this);
  }
}

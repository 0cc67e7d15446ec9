import { afterEach, describe, expect, it } from 'vitest';

import { ModelRecord, ReplicaInfo, Requester, XnbApi } from '../src/api';
import { XnbStore, liveCounters } from '../src/state';

/** A scripted xnb server for the store's state machine: `answer(path, init)` says what comes back. */
function scripted(answer: (path: string, init?: RequestInit) => unknown): { requester: Requester; calls: string[] } {
  const calls: string[] = [];
  const requester: Requester = async (path, init) => {
    calls.push(`${init?.method ?? 'GET'} ${path}`);
    const out = answer(path, init);
    if (out instanceof Response) {
      return out;
    }
    return new Response(JSON.stringify(out), { status: 200 });
  };
  return { requester, calls };
}

const unavailable = (): Response => new Response(JSON.stringify({
  error: { message: 'the xnb cluster is starting; retry in a few seconds', type: 'server_error', param: null,
           code: 'cluster_unavailable' }
}), { status: 503 });

function record(uid: string, status: string, version: number, replicaStatus = status): ModelRecord {
  return {
    uid, model_name: 'smollm2-135m-instruct', status, version, created: 0, ready_at: null, last_error: null,
    spec: { model_name: 'smollm2-135m-instruct', engine: 'llama-cpp', format: 'gguf', size: '135m',
            quantization: 'Q4_1', abilities: ['chat'] },
    replicas: [{ replica: 0, worker: 'tcp://127.0.0.1:1', gpus: [], status: replicaStatus, progress: {}, load: {},
                 error: null }],
    replicas_ready: replicaStatus === 'ready' ? 1 : 0, workers: ['tcp://127.0.0.1:1'], options: {}
  };
}

const cluster = { scheduler: 'tcp://127.0.0.1:2', workers: [], models: 0 };
const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) {
      throw new Error('condition not met in time');
    }
    await new Promise(r => setTimeout(r, 5));
  }
};

let store: XnbStore | null = null;
afterEach(() => store?.dispose());

describe('XnbStore polling', () => {
  it('backs off while the server fails, up to max, and returns to the interval after a success', async () => {
    let failing = true;
    const { requester } = scripted(path => (failing ? unavailable() : path === 'api/models' ? { data: [] } : cluster));
    store = new XnbStore(new XnbApi(requester), { interval: 20, max: 200 });
    const intervals: number[] = [];
    store.poll.ticked.connect((_, state) => {
      if (state.phase === 'rejected' || state.phase === 'resolved') {
        intervals.push(state.interval);
      }
    });
    store.visible = true;
    await until(() => store!.failures >= 8);
    expect(store.error?.status).toBe(503);
    expect(store.error?.message).toMatch(/starting/);
    expect(Math.max(...intervals)).toBeLessThanOrEqual(200);
    expect(Math.max(...intervals)).toBeGreaterThan(20); // it backed off
    failing = false;
    await store.refreshNow();
    await until(() => store!.error === null);
    await until(() => store!.poll.state.phase === 'resolved');
    expect(store.poll.state.interval).toBe(20);
    expect(store.failures).toBe(0);
    expect(store.updated).toBeGreaterThan(0);
  });

  it('asks nothing while hidden and polls again once visible', async () => {
    const { requester, calls } = scripted(path => (path === 'api/models' ? { data: [] } : cluster));
    store = new XnbStore(new XnbApi(requester), { interval: 10, max: 50 });
    await new Promise(r => setTimeout(r, 100));
    expect(calls).toEqual([]); // never shown: never started
    store.visible = true;
    await until(() => calls.length >= 4);
    store.visible = false;
    await new Promise(r => setTimeout(r, 30)); // a request in flight may still finish
    const hidden = calls.length;
    await new Promise(r => setTimeout(r, 150));
    expect(calls.length).toBe(hidden);
    store.visible = true;
    await until(() => calls.length > hidden);
  });

  it('keeps models, cluster and the ready count; counters come from ready models only', async () => {
    const models = [record('a', 'ready', 3), record('b', 'loading', 2)];
    const { requester, calls } = scripted(path => {
      if (path === 'api/models') {
        return { data: models };
      }
      if (path === 'api/models/a/replicas') {
        return { data: [{ replica: 0, status: 'ready', inflight: 1, counters: { requests: 4 }, engine: { tokens_generated: 10, waiting: 2 } }] };
      }
      return cluster;
    });
    store = new XnbStore(new XnbApi(requester), { interval: 1000 });
    await store.refresh();
    expect(store.readyCount).toBe(1);
    expect(store.cluster?.scheduler).toBe('tcp://127.0.0.1:2');
    expect(store.live.get('a')).toEqual({ requests: 4, inflight: 1, queued: 2, tokens: 10, tokensPerSecond: null });
    expect(calls.filter(c => c.includes('replicas'))).toEqual(['GET api/models/a/replicas']);
  });
});

describe('liveCounters', () => {
  it('derives tokens per second from the growth since the last report', () => {
    const at = (tokens: number): Map<string, ReplicaInfo[]> => new Map([['m', [
      { replica: 0, status: 'ready', engine: { tokens_generated: tokens } },
      { replica: 1, status: 'ready', engine: { tokens_generated: tokens } }]]]);
    const first = liveCounters(at(100), new Map(), new Map(), 0);
    expect(first.get('m')?.tokensPerSecond).toBeNull();
    const second = liveCounters(at(150), at(100), first, 2000);
    expect(second.get('m')?.tokens).toBe(300);
    expect(second.get('m')?.tokensPerSecond).toBe(50);
    // A restarted replica (counters went down): no made-up rate.
    expect(liveCounters(at(10), at(150), second, 1000).get('m')?.tokensPerSecond).toBeNull();
  });
});

describe('XnbStore.launch', () => {
  it('follows a launch through its phases with long polls to ready', async () => {
    const phases = [record('m', 'launching', 1), record('m', 'downloading', 2), record('m', 'loading', 3),
                    record('m', 'ready', 4)];
    const { requester, calls } = scripted((path, init) => {
      if (init?.method === 'POST') {
        return new Response(JSON.stringify(phases[0]), { status: 202 });
      }
      const version = Number(new URLSearchParams(path.split('?')[1]).get('version'));
      return phases[version] ?? (path.startsWith('api/models') ? { data: [] } : cluster);
    });
    store = new XnbStore(new XnbApi(requester), { interval: 1000, watchWait: 5 });
    const seen: string[] = [];
    store.changed.connect(() => {
      const s = store!.launches.get('k')?.record?.status;
      if (s && seen[seen.length - 1] !== s) {
        seen.push(s);
      }
    });
    const state = await store.launch('k', { model: 'smollm2-135m-instruct', uid: 'm' });
    expect(seen).toEqual(['launching', 'downloading', 'loading', 'ready']);
    expect(state.done && state.error === null && state.uid === 'm').toBe(true);
    expect(calls.slice(0, 2)).toEqual(['POST api/models', 'GET api/models/m?version=1&wait=5']);
  });

  it('keeps the server\'s error when the launch is refused or fails', async () => {
    const refusal = { error: { message: 'no worker can take the replica: has no GPU', type: 'invalid_request_error',
                               param: null, code: 'placement' } };
    const { requester } = scripted((path, init) => (init?.method === 'POST'
      ? new Response(JSON.stringify(refusal), { status: 409 })
      : path.startsWith('api/models') ? { data: [] } : cluster));
    store = new XnbStore(new XnbApi(requester), { interval: 1000 });
    const refused = await store.launch('k', { model: 'x', gpus: 64 });
    expect([refused.done, refused.error?.status, refused.error?.message])
      .toEqual([true, 409, 'no worker can take the replica: has no GPU']);

    const failed = { ...record('f', 'error', 2, 'error'), last_error: 'the GGUF file is corrupt' };
    const second = scripted((path, init) => (init?.method === 'POST' ? record('f', 'launching', 1) : failed));
    store.dispose();
    store = new XnbStore(new XnbApi(second.requester), { interval: 1000 });
    const state = await store.launch('k', { model: 'x' });
    expect(state.error?.message).toBe('the GGUF file is corrupt');
  });
});

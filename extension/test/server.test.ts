/**
 * The REST client against a real Jupyter server with the xnb extension.  The Python
 * suite (tests/test_labextension.py) runs these with XNB_TEST_JUPYTER_URL and
 * XNB_TEST_JUPYTER_TOKEN set (and XNB_TEST_MODEL: a ready chat model); without them they skip.
 */
import { describe, expect, it } from 'vitest';

import { XnbApi, XnbApiError } from '../src/api';
import { XnbStore } from '../src/state';

const url = process.env.XNB_TEST_JUPYTER_URL;
const token = process.env.XNB_TEST_JUPYTER_TOKEN;
const model = process.env.XNB_TEST_MODEL;

const api = new XnbApi((path, init = {}) => fetch(`${url}/xnb/${path}`, {
  ...init, headers: { ...(init.headers as Record<string, string> | undefined), Authorization: `token ${token}` }
}));

describe.skipIf(!url || !token)('XnbApi on a real Jupyter server', () => {
  it('reads status, catalog and cluster', async () => {
    expect((await api.status()).status).toBe('ready');
    const catalog = await api.catalog('smollm2', 'chat');
    const smol = catalog.find(r => r.name === 'smollm2-135m-instruct');
    expect(smol?.abilities).toContain('chat');
    expect(catalog.every(r => r.abilities.includes('chat'))).toBe(true);
    const cluster = await api.cluster();
    expect(cluster.scheduler).toMatch(/^tcp:\/\//);
    expect(cluster.workers.length).toBeGreaterThan(0);
    expect(cluster.workers[0].nthreads).toBeGreaterThan(0);
  });

  it('raises the server\'s errors with their status and message', async () => {
    const missing = await api.model('no-such-model').catch(e => e);
    expect(missing).toBeInstanceOf(XnbApiError);
    expect(missing.status).toBe(404);
    expect(missing.message).toMatch(/no-such-model/);
    const invalid = await api.launch({ model: 'smollm2-135m-instruct', replicas: 0 }).catch(e => e);
    expect(invalid.status).toBe(400);
    const unknown = await api.launch({ model: 'no-such-family' }).catch(e => e);
    expect(unknown.status).toBe(404);
    expect(unknown.message).toMatch(/catalog/);
  });

  it('keeps the store fresh from the real server', async () => {
    const store = new XnbStore(api, { interval: 1000 });
    try {
      await store.refresh();
      expect(store.error).toBeNull();
      expect(store.cluster?.workers.length).toBeGreaterThan(0);
      expect(Array.isArray(store.models)).toBe(true);
    } finally {
      store.dispose();
    }
  });

  it.skipIf(!model)('streams a chat answer through the OpenAI proxy', async () => {
    const deltas: string[] = [];
    const result = await api.chat(model!, [{ role: 'user', content: 'Say hello.' }], d => deltas.push(d),
                                  { max_tokens: 16 });
    expect(deltas.length).toBeGreaterThan(1);
    expect(result.text).toBe(deltas.join(''));
    expect(['stop', 'length']).toContain(result.finish_reason);
    const [info] = await api.replicas(model!);
    expect(info.counters?.requests).toBeGreaterThan(0);
  });
});

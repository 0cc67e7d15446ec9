import { describe, expect, it } from 'vitest';

import { SseParser, XnbApi, XnbApiError, errorFrom } from '../src/api';
import { snippetCells } from '../src/snippets';

describe('SseParser', () => {
  it('returns the data of complete events only, across chunk boundaries', () => {
    const parser = new SseParser();
    expect(parser.feed('data: {"a":')).toEqual([]);
    expect(parser.feed('1}\n\ndata: [DO')).toEqual(['{"a":1}']);
    expect(parser.feed('NE]\r\n\r\n')).toEqual(['[DONE]']);
  });

  it('joins multi-line data and skips comments and other fields', () => {
    const parser = new SseParser();
    expect(parser.feed(': keep-alive\n\nevent: x\ndata: one\ndata: two\n\n')).toEqual(['one\ntwo']);
  });
});

describe('errorFrom', () => {
  it('reads an OpenAI error object with its status', async () => {
    const body = { error: { message: 'no model named x', type: 'not_found_error', param: 'model', code: 'not_found' } };
    const err = await errorFrom(new Response(JSON.stringify(body), { status: 404 }));
    expect(err).toBeInstanceOf(XnbApiError);
    expect([err.status, err.message, err.type, err.param, err.code])
      .toEqual([404, 'no model named x', 'not_found_error', 'model', 'not_found']);
    expect(err.transient).toBe(false);
  });

  it('says what came back when it is not JSON', async () => {
    const err = await errorFrom(new Response('<html>Bad Gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    expect(err.message).toBe('HTTP 502: <html>Bad Gateway</html>');
    expect(err.transient).toBe(true);
  });
});

describe('XnbApi', () => {
  it('turns a refused connection into a transient error with status 0', async () => {
    // A real connection to a closed port: fetch rejects, the client says what to do.
    const api = new XnbApi(path => fetch(`http://127.0.0.1:9/xnb/${path}`));
    const err = await api.models().catch(e => e);
    expect(err).toBeInstanceOf(XnbApiError);
    expect(err.status).toBe(0);
    expect(err.transient).toBe(true);
    expect(err.message).toMatch(/did not answer/);
  });

  it('builds paths and query strings under xnb/', async () => {
    const seen: string[] = [];
    const api = new XnbApi(async (path, init) => {
      seen.push(`${init?.method ?? 'GET'} ${path}${init?.body ? ` ${init.body}` : ''}`);
      return new Response(JSON.stringify({ data: [] }));
    });
    await api.catalog('small lm', 'chat');
    await api.model('a/b', 3, 10);
    await api.scale('m1', 2);
    await api.events('m1', 12.5);
    expect(seen).toEqual([
      'GET api/catalog?q=small%20lm&ability=chat',
      'GET api/models/a%2Fb?version=3&wait=10',
      'POST api/models/m1/scale {"replicas":2}',
      'GET api/models/m1/events?since=12.5'
    ]);
  });
});

describe('snippets', () => {
  it('points the openai client at this Jupyter server and keeps keys out of the notebook', () => {
    const [cell] = snippetCells('openai', 'my-model', ['chat'], 'http://host:8888/user/me/');
    expect(cell).toContain('base_url="http://host:8888/user/me/xnb/v1"');
    expect(cell).toContain('model="my-model"');
    expect(cell).toContain('os.environ.get("XNB_JUPYTER_TOKEN")');
  });

  it('gives embedding calls for embedding models and a magic cell after %load_ext', () => {
    expect(snippetCells('openai', 'emb', ['embed'], 'http://h/')[0]).toContain('client.embeddings.create');
    expect(snippetCells('magic', 'm', ['chat'], 'http://h/')).toEqual(['%load_ext xnb', '%%xnb chat m --max-tokens 32\nSay hello in five words.']);
  });
});

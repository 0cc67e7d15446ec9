/**
 * The REST client of the xnb server extension.
 *
 * Every call goes to `{base_url}xnb/<path>` through a `Requester`: in
 * JupyterLab that is `ServerConnection.makeRequest` (Jupyter's auth and XSRF
 * apply); in the tests it is `fetch` with a token header.  Errors come back as
 * OpenAI error objects `{"error": {"message", "type", "param", "code"}}` and are
 * raised as `XnbApiError` carrying the HTTP status and the server's message.
 */

/** Sends one request to `{base_url}xnb/<path>` and resolves with the raw response. */
export type Requester = (path: string, init?: RequestInit) => Promise<Response>;

export interface ReplicaRecord {
  replica: number;
  worker: string;
  gpus: number[];
  status: string;
  progress: { downloaded?: number; total?: number; [k: string]: unknown };
  load: Record<string, unknown>;
  error: string | null;
  attempts?: number;
}

export interface ModelRecord {
  uid: string;
  model_name: string;
  status: string;
  spec: {
    model_name: string;
    engine: string;
    format: string;
    size: string | null;
    quantization: string | null;
    abilities: string[];
    context_length?: number | null;
  };
  replicas: ReplicaRecord[];
  replicas_ready: number;
  workers: string[];
  options: Record<string, unknown>;
  created: number;
  ready_at: number | null;
  last_error: string | null;
  version: number;
}

/** What a replica actor reports about itself (`GET .../replicas`). */
export interface ReplicaInfo {
  replica: number;
  status: string;
  inflight?: number;
  streams?: number;
  capacity?: number;
  counters?: Record<string, number>;
  engine?: Record<string, unknown>;
  error?: string;
}

export interface CatalogRow {
  name: string;
  description: string;
  abilities: string[];
  context_length: number | null;
  formats: string[];
  sizes: (string | null)[];
  quantizations: string[];
  builtin?: boolean;
  [k: string]: unknown;
}

export interface WorkerRecord {
  address: string;
  name: string;
  nthreads: number;
  memory_limit: number;
  memory_used: number;
  cpu_percent: number;
  resources: Record<string, number>;
  gpus: number;
  gpu_models?: string[];
  gpu_info?: { index?: number; name?: string; memory_total?: number }[];
  status: string;
  models: { uid: string; replica: number; status: string; gpus: number[] }[];
}

export interface ClusterRecord {
  scheduler: string;
  workers: WorkerRecord[];
  models: number;
}

export interface StatusRecord {
  status: string;
  error: string | null;
  scheduler_address: string | null;
  embedded?: boolean;
  openai_base_path?: string;
  [k: string]: unknown;
}

export interface EventRecord {
  time: number;
  kind: string;
  replica: number | null;
  message: string;
  [k: string]: unknown;
}

/** The launch options the server accepts (`LaunchBody` in xnb/api/admin.py). */
export interface LaunchOptions {
  model: string;
  uid?: string;
  engine?: string;
  format?: string;
  size?: string;
  quantization?: string;
  replicas?: number;
  gpus?: number;
  keep_alive?: number;
}

/** An error answer of the xnb API (or no answer at all: status 0). */
export class XnbApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;

  constructor(status: number, message: string, type = 'server_error', code: string | null = null,
              param: string | null = null) {
    super(message);
    this.name = 'XnbApiError';
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
  }

  /** Worth retrying later: no answer, a gateway/startup error, or 429. */
  get transient(): boolean {
    return this.status === 0 || this.status === 429 || this.status >= 502;
  }
}

/** An `XnbApiError` from a non-2xx response (an OpenAI error object when the server sent one). */
export async function errorFrom(response: Response): Promise<XnbApiError> {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    const err = body?.error;
    if (err && typeof err === 'object' && typeof err.message === 'string') {
      return new XnbApiError(response.status, err.message, err.type ?? 'server_error', err.code ?? null,
                             err.param ?? null);
    }
    if (typeof body?.detail === 'string') {
      return new XnbApiError(response.status, body.detail);
    }
    if (typeof body?.message === 'string') {
      return new XnbApiError(response.status, body.message);
    }
  } catch {
    // not JSON: fall through
  }
  const reason = text.trim().slice(0, 200) || response.statusText || 'no message';
  return new XnbApiError(response.status, `HTTP ${response.status}: ${reason}`);
}

function query(params: Record<string, string | number | undefined | null>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

/** Typed calls on the xnb management API and the OpenAI chat route. */
export class XnbApi {
  constructor(private readonly request: Requester) {}

  /** One JSON call; non-2xx answers and network failures raise `XnbApiError`. */
  async call<T>(path: string, init: RequestInit = {}): Promise<T> {
    let response: Response;
    try {
      response = await this.request(path, init);
    } catch (err) {
      if (err instanceof XnbApiError) {
        throw err;
      }
      throw new XnbApiError(0, `the Jupyter server did not answer (${(err as Error).message ?? err}); ` +
        'check that it is running and reload the page');
    }
    if (!response.ok) {
      throw await errorFrom(response);
    }
    return (await response.json()) as T;
  }

  private post<T>(path: string, body: unknown, method = 'POST'): Promise<T> {
    return this.call<T>(path, {
      method, body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' }
    });
  }

  status(): Promise<StatusRecord> {
    return this.call('api/status');
  }

  async models(): Promise<ModelRecord[]> {
    return (await this.call<{ data: ModelRecord[] }>('api/models')).data;
  }

  model(uid: string, version?: number, wait?: number): Promise<ModelRecord> {
    return this.call(`api/models/${encodeURIComponent(uid)}${query({ version, wait })}`);
  }

  launch(options: LaunchOptions): Promise<ModelRecord & { status_url?: string }> {
    return this.post('api/models', options);
  }

  terminate(uid: string): Promise<Record<string, unknown>> {
    return this.call(`api/models/${encodeURIComponent(uid)}`, { method: 'DELETE' });
  }

  scale(uid: string, replicas: number): Promise<Record<string, unknown>> {
    return this.post(`api/models/${encodeURIComponent(uid)}/scale`, { replicas });
  }

  async events(uid: string, since = 0): Promise<EventRecord[]> {
    return (await this.call<{ data: EventRecord[] }>(
      `api/models/${encodeURIComponent(uid)}/events${query({ since: since || undefined })}`)).data;
  }

  async replicas(uid: string): Promise<ReplicaInfo[]> {
    return (await this.call<{ data: ReplicaInfo[] }>(`api/models/${encodeURIComponent(uid)}/replicas`)).data;
  }

  async catalog(q?: string, ability?: string, format?: string): Promise<CatalogRow[]> {
    return (await this.call<{ data: CatalogRow[] }>(`api/catalog${query({ q, ability, format })}`)).data;
  }

  async engines(name: string): Promise<Record<string, unknown>[]> {
    return (await this.call<{ data: Record<string, unknown>[] }>(
      `api/catalog/${encodeURIComponent(name)}/engines`)).data;
  }

  cluster(): Promise<ClusterRecord> {
    return this.call('api/cluster');
  }

  /**
   * A streamed chat completion (`POST xnb/v1/chat/completions`, `stream: true`):
   * calls `onDelta` with each piece of text and resolves with the whole answer.
   */
  async chat(model: string, messages: { role: string; content: string }[],
             onDelta: (text: string) => void, options: { max_tokens?: number; signal?: AbortSignal } = {}
  ): Promise<{ text: string; finish_reason: string | null }> {
    let response: Response;
    try {
      response = await this.request('v1/chat/completions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
        body: JSON.stringify({ model, messages, stream: true, max_tokens: options.max_tokens ?? 256 }),
        signal: options.signal
      });
    } catch (err) {
      throw new XnbApiError(0, `the Jupyter server did not answer (${(err as Error).message ?? err})`);
    }
    if (!response.ok) {
      throw await errorFrom(response);
    }
    let text = '';
    let finish: string | null = null;
    const parser = new SseParser();
    const take = (data: string): void => {
      if (data === '[DONE]') {
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        throw new XnbApiError(503, chunk.error.message ?? 'the stream broke off', chunk.error.type);
      }
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta?.content ?? '';
        if (delta) {
          text += delta;
          onDelta(delta);
        }
        if (choice.finish_reason) {
          finish = choice.finish_reason;
        }
      }
    };
    if (!response.body) {
      parser.feed(await response.text()).forEach(take);
    } else {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          break;
        }
        parser.feed(decoder.decode(value, { stream: true })).forEach(take);
      }
    }
    parser.feed('\n\n').forEach(take);
    return { text, finish_reason: finish };
  }
}

/** Splits a `text/event-stream` into the `data:` payloads of its events. */
export class SseParser {
  private buffer = '';

  /** Feed more text; returns the data of every event completed by it. */
  feed(text: string): string[] {
    this.buffer += text.replace(/\r\n?/g, '\n');
    const out: string[] = [];
    let end: number;
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block.split('\n')
        .filter(line => line.startsWith('data:'))
        .map(line => line.slice(5).replace(/^ /, ''));
      if (data.length) {
        out.push(data.join('\n'));
      }
    }
    return out;
  }
}

/**
 * "Use it" snippets: the code a notebook needs to call a running model.
 *
 * The OpenAI-compatible clients go through this Jupyter server
 * (`{page_url}xnb/v1`), authenticated with the Jupyter token the xnb server
 * extension puts in the kernel's environment (`XNB_JUPYTER_TOKEN`; behind
 * JupyterHub, the kernel's `JUPYTERHUB_API_TOKEN`), so no key is written into
 * the notebook.
 */

export type SnippetKind = 'xnb' | 'openai' | 'langchain' | 'magic';

export const SNIPPET_LABELS: Record<SnippetKind, string> = {
  xnb: 'xnb client',
  openai: 'openai client',
  langchain: 'LangChain ChatOpenAI',
  magic: '%%xnb chat cell'
};

const PROMPT = 'Say hello in five words.';

const KEY = 'os.environ.get("XNB_JUPYTER_TOKEN") or os.environ["JUPYTERHUB_API_TOKEN"]';

function py(value: string): string {
  return JSON.stringify(value); // a JSON string is a valid Python string literal
}

/** The OpenAI base URL through this Jupyter server, from the page's absolute base URL. */
export function openaiBaseUrl(pageBaseUrl: string): string {
  return `${pageBaseUrl.replace(/\/+$/, '')}/xnb/v1`;
}

/**
 * The cells (source code, in order) that use model `uid` with abilities
 * `abilities` the `kind` way.  Embedding models get embedding calls.
 */
export function snippetCells(kind: SnippetKind, uid: string, abilities: string[], pageBaseUrl: string): string[] {
  const embed = abilities.includes('embed') && !abilities.includes('chat');
  const base = openaiBaseUrl(pageBaseUrl);
  switch (kind) {
    case 'xnb':
      return [[
        'import xnb',
        '',
        'client = xnb.connect()  # the cluster this Jupyter server runs',
        `model = client.get(${py(uid)})`,
        embed
          ? 'vectors = model.embed(["first sentence", "second sentence"])\nprint(vectors.shape)'
          : `reply = model.chat(${py(PROMPT)}, max_tokens=32)\nprint(reply["choices"][0]["message"]["content"])`
      ].join('\n')];
    case 'openai':
      return [[
        'import os',
        'from openai import OpenAI',
        '',
        '# Through this Jupyter server; the xnb extension gives kernels its token.',
        `client = OpenAI(base_url=${py(base)}, api_key=${KEY})`,
        embed
          ? `result = client.embeddings.create(model=${py(uid)}, input=["first sentence", "second sentence"])\n` +
            'print(len(result.data), len(result.data[0].embedding))'
          : `reply = client.chat.completions.create(\n    model=${py(uid)},\n` +
            `    messages=[{"role": "user", "content": ${py(PROMPT)}}],\n    max_tokens=32,\n)\n` +
            'print(reply.choices[0].message.content)'
      ].join('\n')];
    case 'langchain':
      return [[
        'import os',
        embed ? 'from langchain_openai import OpenAIEmbeddings' : 'from langchain_openai import ChatOpenAI',
        '',
        embed
          ? `embeddings = OpenAIEmbeddings(model=${py(uid)}, base_url=${py(base)}, api_key=${KEY},\n` +
            '                              check_embedding_ctx_length=False)\n' +
            'print(len(embeddings.embed_query("hello")))'
          : `llm = ChatOpenAI(model=${py(uid)}, base_url=${py(base)}, api_key=${KEY}, max_tokens=32)\n` +
            `print(llm.invoke(${py(PROMPT)}).content)`
      ].join('\n')];
    case 'magic':
      return ['%load_ext xnb', embed
        ? `texts = ["first sentence", "second sentence"]\n%xnb embed --model ${uid} texts`
        : `%%xnb chat ${uid} --max-tokens 32\n${PROMPT}`];
  }
}

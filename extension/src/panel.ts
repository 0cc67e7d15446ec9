/**
 * The xnb sidebar: running models, catalog (launch), cluster and chat tabs.
 *
 * A Lumino widget with plain DOM inside; it shows what `XnbStore` holds and
 * tells the store when it is visible, so the store polls only then.
 */
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { EventRecord, ModelRecord } from './api';
import { CatalogView } from './catalog';
import { ChatView } from './chat';
import { bytes, h } from './dom';
import { SNIPPET_LABELS, SnippetKind } from './snippets';
import { XnbStore } from './state';

const TABS = ['Models', 'Catalog', 'Cluster', 'Chat'] as const;
type Tab = (typeof TABS)[number];
const PHASES = new Set(['restarting', 'launching', 'downloading', 'loading']);

export interface SidebarOptions {
  /** Insert the `kind` snippet for model `uid` into the active notebook (a new one if none). */
  insertSnippet: (kind: SnippetKind, model: ModelRecord) => Promise<void>;
}

export class XnbSidebar extends Widget {
  readonly store: XnbStore;
  private tabs = new Map<Tab, HTMLButtonElement>();
  private pages = new Map<Tab, HTMLElement>();
  private conn = h('div', { class: 'xnb-conn' });
  private models = h('div', { class: 'xnb-models' });
  private cluster = h('div', { class: 'xnb-cluster' });
  private catalog: CatalogView;
  private chat: ChatView;
  private events = new Map<string, EventRecord[] | string>();
  private notice = h('div', { class: 'xnb-notice', hidden: true });

  constructor(store: XnbStore, private readonly options: SidebarOptions) {
    super();
    this.store = store;
    this.id = 'xnb-sidebar';
    this.addClass('xnb-sidebar');
    this.catalog = new CatalogView(store, uid => this.useModel(uid));
    this.chat = new ChatView(store);
    const bar = h('div', { class: 'xnb-tabs', role: 'tablist' });
    for (const name of TABS) {
      const button = h('button', { class: 'xnb-tab', role: 'tab', onclick: () => this.showTab(name) }, name);
      this.tabs.set(name, button);
      bar.append(button);
    }
    this.pages.set('Models', this.models);
    this.pages.set('Catalog', this.catalog.node);
    this.pages.set('Cluster', this.cluster);
    this.pages.set('Chat', this.chat.node);
    const refresh = h('button', { class: 'jp-Button jp-mod-styled xnb-refresh', title: 'Refresh now',
                                  onclick: () => void store.refreshNow() }, '↻');
    this.node.append(
      h('header', { class: 'xnb-header' }, h('h2', {}, 'xnb models'), refresh), this.conn, bar, this.notice,
      ...this.pages.values());
    store.changed.connect(this.render, this);
    this.showTab('Models');
  }

  /** Switch to tab `name`. */
  showTab(name: Tab): void {
    for (const [tab, button] of this.tabs) {
      button.setAttribute('aria-selected', String(tab === name));
      button.classList.toggle('xnb-tab-active', tab === name);
      this.pages.get(tab)!.hidden = tab !== name;
    }
    if (name === 'Catalog') {
      this.catalog.showing();
    }
  }

  protected onAfterShow(msg: Message): void {
    this.store.visible = true;
  }

  protected onAfterHide(msg: Message): void {
    this.store.visible = false;
  }

  protected onAfterAttach(msg: Message): void {
    this.store.visible = this.isVisible;
  }

  protected onBeforeDetach(msg: Message): void {
    this.store.visible = false;
  }

  dispose(): void {
    this.store.changed.disconnect(this.render, this);
    super.dispose();
  }

  private render(): void {
    const { store } = this;
    if (store.error) {
      this.conn.className = 'xnb-conn xnb-error';
      this.conn.textContent = `${store.error.message}` +
        (store.failures > 1 ? ` (retrying, ${store.failures} failures in a row)` : ' (retrying)');
    } else {
      this.conn.className = 'xnb-conn xnb-muted';
      this.conn.textContent = store.updated ? `updated ${new Date(store.updated).toLocaleTimeString()}` : 'connecting…';
    }
    this.renderModels();
    this.renderCluster();
    this.catalog.update();
    this.chat.update();
  }

  private say(text: string, error = false): void {
    this.notice.hidden = false;
    this.notice.className = `xnb-notice ${error ? 'xnb-error' : ''}`;
    this.notice.replaceChildren(h('span', {}, text),
      h('button', { class: 'xnb-link', onclick: () => { this.notice.hidden = true; } }, 'dismiss'));
  }

  private useModel(uid: string): void {
    this.showTab('Models');
    this.models.querySelector(`[data-uid="${CSS.escape(uid)}"]`)?.scrollIntoView({ block: 'nearest' });
  }

  private renderModels(): void {
    const { models } = this.store;
    if (!models.length) {
      this.models.replaceChildren(h('div', { class: 'xnb-muted xnb-empty' },
        this.store.updated ? 'No models running. Launch one from the Catalog tab.' : 'Loading…'));
      return;
    }
    this.models.replaceChildren(...models.map(m => this.modelCard(m)));
  }

  private modelCard(m: ModelRecord): HTMLElement {
    const live = this.store.live.get(m.uid);
    const spec = m.spec;
    const launching = PHASES.has(m.status);
    const total = m.replicas.length || 1;
    const done = m.replicas.filter(r => r.status === 'ready').length;
    const button = (cls: string, label: string, onclick: () => void, title?: string): HTMLButtonElement =>
      h('button', { class: `jp-Button jp-mod-styled ${cls}`, title, onclick }, label);
    const events = this.events.get(m.uid);
    return h('div', { class: 'xnb-model', 'data-uid': m.uid },
      h('div', { class: 'xnb-row' },
        h('span', { class: 'xnb-name' }, m.uid),
        h('span', { class: `xnb-status xnb-status-${m.status}` }, m.status)),
      h('div', { class: 'xnb-muted' },
        [spec.engine, spec.format, spec.size, spec.quantization].filter(Boolean).join(' · '),
        m.uid !== m.model_name ? ` (${m.model_name})` : ''),
      launching && h('div', { class: 'xnb-progress' },
        h('div', { class: 'xnb-progress-bar', style: `width: ${Math.max(4, Math.round(100 * done / total))}%` })),
      h('ul', { class: 'xnb-replicas' }, m.replicas.map(r => {
        const p = r.progress ?? {};
        const pct = r.status === 'downloading' && p.total ? ` ${Math.round(100 * (p.downloaded ?? 0) / p.total)}%` : '';
        return h('li', {}, `replica ${r.replica}: `, h('span', { class: `xnb-status xnb-status-${r.status}` },
          r.status + pct), ` on ${r.worker}`, r.gpus.length ? ` (GPU ${r.gpus.join(', ')})` : '',
          r.error ? h('div', { class: 'xnb-error' }, r.error) : null);
      })),
      live && h('div', { class: 'xnb-live' },
        `${live.requests} requests · ${live.inflight} in flight · ${live.queued} queued`,
        live.tokensPerSecond !== null ? ` · ${live.tokensPerSecond.toFixed(1)} tok/s` : ''),
      m.last_error && h('div', { class: 'xnb-error' }, m.last_error),
      h('div', { class: 'xnb-row xnb-use' }, h('span', { class: 'xnb-muted' }, 'Insert code:'),
        (Object.keys(SNIPPET_LABELS) as SnippetKind[]).map(kind =>
          button(`xnb-snippet xnb-snippet-${kind}`, kind === 'magic' ? '%%xnb' : kind === 'langchain' ? 'LangChain' : kind,
                 () => void this.options.insertSnippet(kind, m).catch(err => this.say(err.message, true)),
                 `Insert the ${SNIPPET_LABELS[kind]} code into the active notebook`))),
      h('div', { class: 'xnb-row xnb-actions' },
        spec.abilities.includes('chat') && button('xnb-chat-with', 'Chat', () => {
          this.showTab('Chat');
          this.chat.select(m.uid);
        }),
        button('xnb-scale', 'Scale…', () => void this.scale(m)),
        button('xnb-events-toggle', events !== undefined ? 'Hide events' : 'Events', () => void this.toggleEvents(m.uid)),
        button('xnb-terminate jp-mod-warn', 'Terminate', () => void this.terminate(m))),
      events !== undefined && h('div', { class: 'xnb-events' }, typeof events === 'string'
        ? h('div', { class: 'xnb-error' }, events)
        : events.slice(-30).map(e => h('div', { class: 'xnb-event' },
          h('span', { class: 'xnb-muted' }, new Date(e.time * 1000).toLocaleTimeString()), ` ${e.kind}`,
          e.replica !== null ? ` [${e.replica}]` : '', `: ${e.message}`))));
  }

  private async toggleEvents(uid: string): Promise<void> {
    if (this.events.has(uid)) {
      this.events.delete(uid);
    } else {
      try {
        this.events.set(uid, await this.store.api.events(uid));
      } catch (err) {
        this.events.set(uid, (err as Error).message);
      }
    }
    this.renderModels();
  }

  private async scale(m: ModelRecord): Promise<void> {
    const result = await InputDialog.getNumber({ title: `Scale ${m.uid}: replicas`, value: m.replicas.length });
    if (!result.button.accept || result.value === null) {
      return;
    }
    try {
      await this.store.scale(m.uid, result.value);
      this.say(`${m.uid}: scaling to ${result.value} replica(s)`);
    } catch (err) {
      this.say(`${m.uid}: ${(err as Error).message}`, true);
    }
  }

  private async terminate(m: ModelRecord): Promise<void> {
    const result = await showDialog({
      title: `Terminate ${m.uid}?`,
      body: `Its ${m.replicas.length} replica(s) stop and free their memory; requests in flight fail.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Terminate' })]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await this.store.terminate(m.uid);
      this.events.delete(m.uid);
    } catch (err) {
      this.say(`${m.uid}: ${(err as Error).message}`, true);
    }
  }

  private renderCluster(): void {
    const c = this.store.cluster;
    if (!c) {
      this.cluster.replaceChildren(h('div', { class: 'xnb-muted' }, 'Loading…'));
      return;
    }
    const cores = c.workers.reduce((n, w) => n + w.nthreads, 0);
    const gpus = c.workers.reduce((n, w) => n + (w.gpus || 0), 0);
    this.cluster.replaceChildren(
      h('div', {}, h('b', {}, 'Scheduler '), h('code', {}, c.scheduler)),
      h('div', { class: 'xnb-muted' },
        `${c.workers.length} worker(s) · ${cores} cores · ${gpus} GPU(s) · ${c.models} model(s)`),
      h('table', { class: 'xnb-workers' },
        h('thead', {}, h('tr', {}, ['Worker', 'Cores', 'Memory', 'GPUs', 'Models'].map(t => h('th', {}, t)))),
        h('tbody', {}, c.workers.map(w => {
          const gpuModels = w.gpu_models ?? (w.gpu_info ?? []).map(g => g.name ?? '').filter(Boolean);
          return h('tr', {},
            h('td', { title: w.address }, w.name !== w.address ? w.name : w.address.replace(/^\w+:\/\//, '')),
            h('td', {}, w.nthreads),
            h('td', {}, `${bytes(w.memory_used)} / ${bytes(w.memory_limit)}`),
            h('td', {}, w.gpus ? `${w.gpus}${gpuModels.length ? ` × ${[...new Set(gpuModels)].join(', ')}` : ''}` : '–'),
            h('td', {}, w.models.length ? w.models.map(m => `${m.uid}[${m.replica}] ${m.status}`).join(', ') : '–'));
        }))));
  }
}

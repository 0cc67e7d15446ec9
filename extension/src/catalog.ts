/**
 * The catalog tab: search and filter the catalog, and a launch form per entry
 * whose progress and errors show in place.
 */
import { CatalogRow, XnbApiError } from './api';
import { h } from './dom';
import { LaunchState, XnbStore } from './state';

/** Types of model, by the abilities that make them. */
export const TYPES: Record<string, string[]> = {
  'language model': ['chat', 'generate'],
  embedding: ['embed'],
  reranker: ['rerank'],
  'speech to text': ['transcribe'],
  'text to speech': ['speech'],
  image: ['image']
};

/** Whether a catalog row is of model type `type` ('' = any). */
export function isOfType(row: CatalogRow, type: string): boolean {
  return !type || (TYPES[type] ?? []).some(a => row.abilities.includes(a));
}

interface EngineRow {
  engine: string;
  format: string;
  size: string | null;
  quantizations: string[];
  requires_gpu?: boolean;
}

function select(cls: string, options: [string, string][], value = ''): HTMLSelectElement {
  const el = h('select', { class: `jp-mod-styled ${cls}` },
               options.map(([v, label]) => h('option', { value: v }, label)));
  el.value = value;
  return el;
}

function phaseText(state: LaunchState): string {
  const record = state.record;
  if (state.error) {
    return 'failed';
  }
  if (!record) {
    return 'submitting…';
  }
  const parts = record.replicas.map(r => {
    const p = r.progress ?? {};
    if (r.status === 'downloading' && p.total) {
      return `downloading ${Math.round(100 * (p.downloaded ?? 0) / p.total)}%`;
    }
    return r.status;
  });
  return `${record.uid}: ${record.status} [${parts.join(', ')}] ${record.replicas_ready}/${record.replicas.length} ready`;
}

/** 0..1: how far a launch is (phases, download fraction), for the progress bar. */
export function launchFraction(state: LaunchState): number {
  const phases = ['launching', 'downloading', 'loading', 'ready'];
  const record = state.record;
  if (!record || !record.replicas.length) {
    return state.done ? 1 : 0.02;
  }
  const each = record.replicas.map(r => {
    const i = phases.indexOf(r.status);
    if (i < 0) {
      return r.status === 'restarting' ? 0 : 1;
    }
    let f = i / (phases.length - 1);
    const p = r.progress ?? {};
    if (r.status === 'downloading' && p.total) {
      f += ((p.downloaded ?? 0) / p.total) / (phases.length - 1);
    }
    return f;
  });
  return Math.max(0.02, each.reduce((a, b) => a + b, 0) / each.length);
}

export class CatalogView {
  readonly node = h('div', { class: 'xnb-catalog' });
  private search = h('input', { class: 'jp-mod-styled xnb-catalog-search', type: 'search',
                                placeholder: 'Search the catalog', 'aria-label': 'Search the catalog' });
  private type = select('xnb-catalog-type', [['', 'any type'], ...Object.keys(TYPES).map(t => [t, t] as [string, string])]);
  private ability = select('xnb-catalog-ability', [['', 'any ability']]);
  private list = h('div', { class: 'xnb-catalog-list' });
  private message = h('div', { class: 'xnb-catalog-message' });
  private rows: CatalogRow[] = [];
  private loaded = false;
  private openForm: { name: string; node: HTMLElement; update: () => void } | null = null;
  private timer = 0;

  constructor(private readonly store: XnbStore, private readonly onUse: (uid: string) => void) {
    this.search.addEventListener('input', () => {
      window.clearTimeout(this.timer);
      this.timer = window.setTimeout(() => void this.load(), 250);
    });
    this.type.addEventListener('change', () => this.render());
    this.ability.addEventListener('change', () => void this.load());
    this.node.append(h('div', { class: 'xnb-catalog-filters' }, this.search, this.type, this.ability),
                     this.message, this.list);
  }

  /** Fetch the catalog with the current search and ability (once when first shown, then on input). */
  async load(): Promise<void> {
    try {
      this.rows = await this.store.api.catalog(this.search.value.trim() || undefined, this.ability.value || undefined);
      this.loaded = true;
      this.message.textContent = '';
      if (this.ability.options.length <= 1) {
        const abilities = [...new Set(this.rows.flatMap(r => r.abilities))].sort();
        this.ability.append(...abilities.map(a => h('option', { value: a }, a)));
      }
    } catch (err) {
      this.message.replaceChildren(h('div', { class: 'xnb-error' }, (err as Error).message));
    }
    this.render();
  }

  showing(): void {
    if (!this.loaded) {
      void this.load();
    }
  }

  /** Launch progress changed: update the open form. */
  update(): void {
    this.openForm?.update();
  }

  private render(): void {
    const rows = this.rows.filter(r => isOfType(r, this.type.value));
    const open = this.openForm;
    this.list.replaceChildren(...rows.map(row => {
      const entry = h('div', { class: 'xnb-catalog-entry', 'data-name': row.name },
        h('div', { class: 'xnb-row' },
          h('span', { class: 'xnb-name' }, row.name),
          h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept xnb-open-launch',
                        onclick: () => this.toggleForm(row, entry) }, 'Launch…')),
        h('div', { class: 'xnb-muted' }, row.description),
        h('div', { class: 'xnb-chips' },
          row.abilities.map(a => h('span', { class: 'xnb-chip' }, a)),
          row.formats.map(f => h('span', { class: 'xnb-chip xnb-chip-format' }, f)),
          h('span', { class: 'xnb-muted' }, row.sizes.filter(Boolean).join(' · '))));
      if (open && open.name === row.name) {
        entry.append(open.node);
      }
      return entry;
    }));
    if (this.loaded && !rows.length) {
      this.list.append(h('div', { class: 'xnb-muted' }, 'No model matches.'));
    }
  }

  private toggleForm(row: CatalogRow, entry: HTMLElement): void {
    if (this.openForm?.name === row.name) {
      this.openForm.node.remove();
      this.openForm = null;
      return;
    }
    this.openForm?.node.remove();
    this.openForm = this.launchForm(row);
    entry.append(this.openForm.node);
  }

  private launchForm(row: CatalogRow): { name: string; node: HTMLElement; update: () => void } {
    const key = `catalog:${row.name}`;
    const engine = select('xnb-launch-engine', [['', 'default engine']]);
    const format = select('xnb-launch-format', [['', 'any format'], ...row.formats.map(f => [f, f] as [string, string])]);
    const size = select('xnb-launch-size', [['', 'default size'],
      ...row.sizes.filter((s): s is string => !!s).map(s => [s, s] as [string, string])]);
    const quant = select('xnb-launch-quantization', [['', 'default quantization'],
      ...row.quantizations.map(q => [q, q] as [string, string])]);
    const uid = h('input', { class: 'jp-mod-styled xnb-launch-uid', placeholder: 'name (default: generated)' });
    const replicas = h('input', { class: 'jp-mod-styled xnb-launch-replicas', type: 'number', min: 1, max: 64, value: 1 });
    const gpus = h('input', { class: 'jp-mod-styled xnb-launch-gpus', type: 'number', min: 0, placeholder: 'auto' });
    const keepAlive = h('input', { class: 'jp-mod-styled xnb-launch-keep-alive', type: 'number', min: 1,
                                   placeholder: 'never unload' });
    const bar = h('div', { class: 'xnb-progress-bar' });
    const progress = h('div', { class: 'xnb-launch-progress', hidden: true },
                       h('div', { class: 'xnb-progress' }, bar), h('div', { class: 'xnb-launch-phase' }));
    const error = h('div', { class: 'xnb-error xnb-launch-error', hidden: true });
    const use = h('button', { class: 'jp-Button jp-mod-styled xnb-launch-use', hidden: true }, 'Use it…');
    const go = h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept xnb-launch' }, 'Launch');

    void this.store.api.engines(row.name).then(rows => {
      const names = [...new Set((rows as unknown as EngineRow[]).map(r => r.engine))];
      engine.append(...names.map(n => h('option', { value: n }, n)));
    }).catch(() => undefined); // the default engine still works

    const field = (label: string, input: HTMLElement): HTMLElement =>
      h('label', { class: 'xnb-field' }, h('span', {}, label), input);
    const node = h('div', { class: 'xnb-launch-form', role: 'dialog', 'aria-label': `Launch ${row.name}` },
      h('div', { class: 'xnb-form-grid' },
        field('Engine', engine), field('Format', format), field('Size', size), field('Quantization', quant),
        field('Replicas', replicas), field('GPUs per replica', gpus), field('Keep alive (s)', keepAlive),
        field('Name', uid)),
      h('div', { class: 'xnb-row' }, go, use), progress, error);

    const update = (): void => {
      const state = this.store.launches.get(key);
      if (!state) {
        return;
      }
      progress.hidden = false;
      const finished = state.done && !state.error;
      bar.style.width = `${finished ? 100 : Math.round(100 * launchFraction(state))}%`;
      bar.classList.toggle('xnb-progress-failed', !!state.error);
      (progress.querySelector('.xnb-launch-phase') as HTMLElement).textContent =
        state.done && !state.error && state.record ? `${state.record.uid} is ${state.record.status}` : phaseText(state);
      error.hidden = !state.error;
      error.textContent = state.error ? state.error.message : '';
      go.disabled = !state.done;
      use.hidden = !(state.done && !state.error && state.record);
    };
    use.addEventListener('click', () => {
      const uidNow = this.store.launches.get(key)?.record?.uid;
      if (uidNow) {
        this.onUse(uidNow);
      }
    });
    go.addEventListener('click', () => {
      const num = (el: HTMLInputElement): number | undefined => el.value === '' ? undefined : Number(el.value);
      const options = {
        model: row.name,
        uid: uid.value.trim() || undefined,
        engine: engine.value || undefined,
        format: format.value || undefined,
        size: size.value || undefined,
        quantization: quant.value || undefined,
        replicas: num(replicas) ?? 1,
        gpus: num(gpus),
        keep_alive: num(keepAlive)
      };
      if (options.replicas < 1 || !Number.isInteger(options.replicas)) {
        error.hidden = false;
        error.textContent = 'Replicas must be a whole number of at least 1.';
        return;
      }
      go.disabled = true;
      void this.store.launch(key, options).catch((err: XnbApiError) => {
        error.hidden = false;
        error.textContent = err.message;
      });
    });
    return { name: row.name, node, update };
  }
}

/** The chat tab: try a running chat model, answers streamed, one conversation per model. */
import { h } from './dom';
import { XnbStore } from './state';

interface Message {
  role: 'user' | 'assistant';
  content: string;
}

export class ChatView {
  readonly node = h('div', { class: 'xnb-chat' });
  private model = h('select', { class: 'jp-mod-styled xnb-chat-model', 'aria-label': 'Model' });
  private log = h('div', { class: 'xnb-chat-log', 'aria-live': 'polite' });
  private input = h('textarea', { class: 'jp-mod-styled xnb-chat-input', rows: 3,
                                  placeholder: 'Message (Enter sends, Shift+Enter: new line)' });
  private send = h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept xnb-chat-send' }, 'Send');
  private stop = h('button', { class: 'jp-Button jp-mod-styled xnb-chat-stop', disabled: true }, 'Stop');
  private clear = h('button', { class: 'jp-Button jp-mod-styled xnb-chat-clear' }, 'Clear');
  private maxTokens = h('input', { class: 'jp-mod-styled xnb-chat-max-tokens', type: 'number', min: 1, value: 256,
                                   title: 'Longest answer, in tokens', 'aria-label': 'Max tokens' });
  private error = h('div', { class: 'xnb-error xnb-chat-error', hidden: true });
  private conversations = new Map<string, Message[]>();
  private abort: AbortController | null = null;

  constructor(private readonly store: XnbStore) {
    this.node.append(
      h('div', { class: 'xnb-row' }, h('span', {}, 'Model'), this.model),
      this.log, this.error, this.input,
      h('div', { class: 'xnb-row' }, this.send, this.stop, this.clear,
        h('label', { class: 'xnb-muted xnb-chat-limit' }, 'max tokens ', this.maxTokens)));
    this.model.addEventListener('change', () => this.renderLog());
    this.send.addEventListener('click', () => void this.ask());
    this.stop.addEventListener('click', () => this.abort?.abort());
    this.clear.addEventListener('click', () => {
      this.conversations.delete(this.model.value);
      this.renderLog();
    });
    this.input.addEventListener('keydown', (event: KeyboardEvent) => {
      if (event.key === 'Enter' && !event.shiftKey) {
        event.preventDefault();
        void this.ask();
      }
    });
    this.update();
  }

  /** Pick `uid` (when it can chat). */
  select(uid: string): void {
    this.update();
    if ([...this.model.options].some(o => o.value === uid)) {
      this.model.value = uid;
      this.renderLog();
    }
  }

  /** Models changed: keep the model list to the ready chat models, keeping the choice. */
  update(): void {
    const ready = this.store.models.filter(m => (m.status === 'ready' || m.status === 'degraded') &&
                                                m.spec.abilities.includes('chat'));
    const current = this.model.value;
    const uids = ready.map(m => m.uid);
    const shown = [...this.model.options].map(o => o.value).filter(Boolean);
    if (uids.join('\n') !== shown.join('\n')) {
      this.model.replaceChildren(...(uids.length ? uids.map(u => h('option', { value: u }, u))
        : [h('option', { value: '' }, 'no chat model is ready')]));
      this.model.value = uids.includes(current) ? current : (uids[0] ?? '');
      this.renderLog();
    }
    this.send.disabled = !this.model.value || this.abort !== null;
  }

  private renderLog(): void {
    const messages = this.conversations.get(this.model.value) ?? [];
    this.log.replaceChildren(...messages.map(m => h('div', { class: `xnb-msg xnb-msg-${m.role}` }, m.content)));
    if (!messages.length) {
      this.log.append(h('div', { class: 'xnb-muted' },
        this.model.value ? `Ask ${this.model.value} something.` : 'Launch a chat model from the catalog first.'));
    }
    this.log.scrollTop = this.log.scrollHeight;
  }

  private async ask(): Promise<void> {
    const uid = this.model.value;
    const text = this.input.value.trim();
    if (!uid || !text || this.abort) {
      return;
    }
    const messages = this.conversations.get(uid) ?? [];
    this.conversations.set(uid, messages);
    messages.push({ role: 'user', content: text });
    const answer: Message = { role: 'assistant', content: '' };
    this.input.value = '';
    this.error.hidden = true;
    this.renderLog();
    const bubble = h('div', { class: 'xnb-msg xnb-msg-assistant xnb-msg-streaming' });
    this.log.append(bubble);
    this.abort = new AbortController();
    this.send.disabled = true;
    this.stop.disabled = false;
    try {
      await this.store.api.chat(uid, messages.map(m => ({ role: m.role, content: m.content })), delta => {
        answer.content += delta;
        bubble.textContent = answer.content;
        this.log.scrollTop = this.log.scrollHeight;
      }, { signal: this.abort.signal, max_tokens: Math.max(1, Number(this.maxTokens.value) || 256) });
    } catch (err) {
      if ((err as Error).name !== 'AbortError' && !this.abort.signal.aborted) {
        this.error.hidden = false;
        this.error.textContent = (err as Error).message;
      }
    } finally {
      if (answer.content) {
        messages.push(answer);
      } else {
        messages.pop(); // nothing came back: let the user send it again
        this.input.value = text;
      }
      this.abort = null;
      this.stop.disabled = true;
      this.renderLog();
      this.update();
    }
  }
}

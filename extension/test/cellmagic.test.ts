import { describe, expect, it } from 'vitest';
import { EditorState } from '@codemirror/state';
import { syntaxTree } from '@codemirror/language';

import { activeLanguageName, isPlainTextCellMagic, plainTextCellMagic } from '../src/cellmagic';

describe('isPlainTextCellMagic', () => {
  it('matches the chat and complete cell magics, with or without arguments', () => {
    expect(isPlainTextCellMagic('%%xnb chat')).toBe(true);
    expect(isPlainTextCellMagic('%%xnb chat qwen --system "be short"')).toBe(true);
    expect(isPlainTextCellMagic('%%xnb  complete\tqwen')).toBe(true);
  });
  it('leaves other lines to Python', () => {
    for (const line of ['%%xnb', '%%xnb chatty', '%xnb chat', '# %%xnb chat', ' %%xnb chat', '%%xnb launch qwen', '%%time', 'x = 1']) {
      expect(isPlainTextCellMagic(line), line).toBe(false);
    }
  });
});

describe('plainTextCellMagic', () => {
  const stateFor = (doc: string): EditorState => EditorState.create({ doc, extensions: plainTextCellMagic(doc) });

  it('switches the language on and off as the first line changes', () => {
    let state = stateFor('x = 1\ndef f(): pass');
    expect(activeLanguageName(state)).toBe(null);
    state = state.update({ changes: { from: 0, to: 5, insert: '%%xnb chat' } }).state;
    expect(activeLanguageName(state)).toBe('xnb-cell-magic');
    state = state.update({ changes: { from: 0, insert: '# ' } }).state;
    expect(activeLanguageName(state)).toBe(null);
  });

  it('tokenises only the magic line', () => {
    const doc = '%%xnb chat --max-tokens=8 "q"\ndef for in import "quoted"\n\nreturn 1';
    const state = stateFor(doc);
    expect(activeLanguageName(state)).toBe('xnb-cell-magic');
    const tokens: string[] = [];
    syntaxTree(state).iterate({
      enter: (node) => {
        if (node.type.name && !node.type.isTop) {
          tokens.push(`${node.from}:${doc.slice(node.from, node.to)}`);
        }
      }
    });
    expect(tokens).toEqual(['6:chat', '11:--', '13:max', '16:-', '17:tokens', '23:=', '24:8', '26:"q"']);
  });
});

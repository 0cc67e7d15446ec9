/**
 * `%%xnb chat` and `%%xnb complete` cells hold a prompt, not Python: show their body as plain
 * text. JupyterLab 4 picks one language per notebook, so this CodeMirror 6 extension overrides
 * the editor's language (highest precedence) with a small stream language while the cell's first
 * line is such a magic: the magic line is coloured about as Python colours it, the body not at all.
 */
import { StreamLanguage, StringStream, language } from '@codemirror/language';
import { Compartment, EditorState, Extension, Prec } from '@codemirror/state';

/** True when a cell whose first line is `firstLine` is an `%%xnb chat` / `%%xnb complete` cell. */
export function isPlainTextCellMagic(firstLine: string): boolean {
  return /^%%xnb[ \t]+(chat|complete)(\s|$)/.test(firstLine);
}

interface LineState {
  line: number;
}

/** The magic line tokenised roughly as Python shows it; every later line is untokenised text. */
export const cellMagicLanguage = StreamLanguage.define<LineState>({
  name: 'xnb-cell-magic',
  startState: () => ({ line: 0 }),
  copyState: (state) => ({ line: state.line }),
  blankLine: (state) => {
    state.line++;
  },
  token: (stream: StringStream, state: LineState): string | null => {
    if (stream.sol()) {
      state.line++;
    }
    if (state.line > 1) {
      stream.skipToEnd();
      return null;
    }
    if (stream.eatSpace()) {
      return null;
    }
    if (stream.match(/^%+\w*/)) {
      return null; // Python leaves `%%xnb` uncoloured too
    }
    if (stream.match(/^[=\-+*/<>]+/)) {
      return 'operator';
    }
    if (stream.match(/^"[^"]*"?|^'[^']*'?/)) {
      return 'string';
    }
    if (stream.match(/^\d[\d.]*/)) {
      return 'number';
    }
    if (stream.match(/^[\w.]+/)) {
      return 'variableName';
    }
    stream.next();
    return null;
  }
});

/** The editor extension: `source` is the cell's text when its editor is created. */
export function plainTextCellMagic(source: string): Extension {
  const slot = new Compartment();
  const override = (plain: boolean): Extension => (plain ? Prec.highest(cellMagicLanguage.extension) : []);
  return [
    slot.of(override(isPlainTextCellMagic(source.split('\n', 1)[0]))),
    EditorState.transactionExtender.of((tr) => {
      if (!tr.docChanged) {
        return null;
      }
      const plain = isPlainTextCellMagic(tr.newDoc.line(1).text);
      return plain === isPlainTextCellMagic(tr.startState.doc.line(1).text) ? null : { effects: slot.reconfigure(override(plain)) };
    })
  ];
}

/** The language the editor state uses now (for tests). */
export const activeLanguageName = (state: EditorState): string | null => state.facet(language)?.name ?? null;

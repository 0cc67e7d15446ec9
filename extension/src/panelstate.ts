/**
 * What the xnb panel's notebook output shows (see paneloutput.ts), decided from what its
 * widget-view renderer and the notebook's kernel say; free of the DOM so vitest can check it.
 */

export const PANEL_MIME = 'application/vnd.xnb.panel+json';
export const WIDGET_VIEW_MIME = 'application/vnd.jupyter.widget-view+json';
/** Ahead of jupyterlab_widgets' widget-view factory (rank -10); lower ranks win. */
export const PANEL_RANK = -20;
/** Shown when the bundle has no hint of its own (the kernel side sends `hint`). */
export const DEFAULT_HINT =
  'xnb panel — this output belongs to an earlier kernel session; run this cell again (or %xnb panel) to show it';

/** What the output shows: the widget (live), the hint (stale), or the widget renderer's own
 * loading state while that is still undecided (pending). */
export type PanelOutputState = 'live' | 'stale' | 'pending';

export interface PanelOutputFacts {
  /** The widget-view renderer holds a view (a child Lumino widget). */
  hasView: boolean;
  /** The widget-view renderer gave up (ipywidgets marks its errors with the class `jupyter-widgets`). */
  failed: boolean;
  /** The notebook's kernel restarted, died or was replaced since this output was rendered. */
  kernelGone: boolean;
  /** The notebook is ready and has no kernel. */
  noKernel: boolean;
}

export function panelOutputState(facts: PanelOutputFacts): PanelOutputState {
  if (facts.kernelGone || facts.noKernel) {
    return 'stale'; // a view still shown belongs to the old kernel: its widgets no longer answer
  }
  if (facts.hasView) {
    return 'live';
  }
  return facts.failed ? 'stale' : 'pending';
}

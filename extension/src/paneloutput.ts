/**
 * The xnb panel's notebook output, kept readable after its kernel is gone.
 *
 * `xnb.jupyter.panel()` is an ipywidget: its output holds a widget-view that only the kernel
 * that made it can fill. After a kernel restart ipywidgets shows broken-link icons (the views
 * stay, disconnected) and, once the notebook is reopened, "Error displaying widget: model not
 * found"; neither says what to do, and ipywidgets has no hook to change them. So the panel's
 * bundle also carries `application/vnd.xnb.panel+json` (the widget-view plus a hint), and each
 * notebook's rendermime gets a renderer for it, ranked ahead of the widget-view: it delegates to
 * that notebook's widget-view renderer and shows the hint instead while that renderer holds no
 * live view. JupyterLab without this extension skips the unknown type and renders the widget.
 */
import type { ISessionContext } from '@jupyterlab/apputils';
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Panel, Widget } from '@lumino/widgets';

import { DEFAULT_HINT, PANEL_MIME, PanelOutputState, WIDGET_VIEW_MIME, panelOutputState } from './panelstate';

export { PANEL_MIME, PANEL_RANK, WIDGET_VIEW_MIME } from './panelstate';

/** Kernel statuses after which a rendered widget no longer has its kernel-side model. */
const KERNEL_GONE = new Set(['restarting', 'autorestarting', 'dead']);

/** How often to look whether jupyterlab_widgets has attached this notebook's widget manager. */
const MANAGER_POLL_MS = 100;

export interface PanelRendererContext {
  /** The notebook's rendermime (jupyterlab_widgets adds its widget-view factory here, with the manager). */
  rendermime: IRenderMimeRegistry;
  /** The app's widget-view factory: the notebook's starts as this one, which has no widget manager. */
  appWidgetFactory: () => IRenderMime.IRendererFactory | undefined;
  sessionContext: ISessionContext;
}

export class XnbPanelRenderer extends Panel implements IRenderMime.IRenderer {
  constructor(private readonly context: PanelRendererContext) {
    super();
    this.addClass('xnb-panel-output');
    this.hint = new Widget();
    this.hint.addClass('xnb-panel-hint');
    this.hint.hide();
    this.addWidget(this.hint);
    this.observer = new MutationObserver(() => this.refresh());
    context.sessionContext.statusChanged.connect(this.onStatus, this);
    context.sessionContext.kernelChanged.connect(this.onKernelChanged, this);
  }

  /** The widget-view renderer this output delegates to (null until the widget manager is attached). */
  get inner(): IRenderMime.IRenderer | null {
    return this._inner;
  }

  get state(): PanelOutputState {
    const inner = this._inner;
    const session = this.context.sessionContext;
    return panelOutputState({
      hasView: ((inner as { widgets?: ReadonlyArray<Widget> } | null)?.widgets?.length ?? 0) > 0,
      failed: inner !== null && inner.hasClass('jupyter-widgets'),
      kernelGone: this.kernelGone,
      noKernel: session.isReady && !session.session?.kernel
    });
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[PANEL_MIME] as { hint?: unknown } | undefined;
    this.hint.node.textContent = typeof data?.hint === 'string' ? data.hint : DEFAULT_HINT;
    this.kernelGone = false; // a (re)render comes from the kernel running now
    const generation = ++this.generation;
    this.setInner(null);
    this.refresh();
    const factory = await this.widgetFactory();
    if (!factory || this.isDisposed || generation !== this.generation) {
      this.refresh();
      return;
    }
    const inner = this.context.rendermime.createRenderer(WIDGET_VIEW_MIME);
    this.setInner(inner);
    this.refresh();
    await inner.renderModel(model);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.observer.disconnect();
    this.context.sessionContext.statusChanged.disconnect(this.onStatus, this);
    this.context.sessionContext.kernelChanged.disconnect(this.onKernelChanged, this);
    super.dispose();
  }

  /** The notebook's widget-view factory, once it is not the app's manager-less one any more:
   * jupyterlab_widgets swaps it in when the kernel is ready, and only renderers it made then,
   * or found as direct output children, get the manager (this one's inner is not direct). */
  private async widgetFactory(): Promise<IRenderMime.IRendererFactory | undefined> {
    const session = this.context.sessionContext;
    for (;;) {
      const factory = this.context.rendermime.getFactory(WIDGET_VIEW_MIME);
      if (!factory || factory !== this.context.appWidgetFactory() || this.isDisposed) {
        return factory;
      }
      if (session.isReady && !session.session?.kernel) {
        return undefined; // no kernel, so no widget manager will come (the hint shows)
      }
      await new Promise((resolve) => setTimeout(resolve, MANAGER_POLL_MS));
    }
  }

  private setInner(inner: IRenderMime.IRenderer | null): void {
    this.observer.disconnect();
    this._inner?.dispose();
    this._inner = inner;
    this.innerHiddenByUs = false;
    if (inner) {
      this.addWidget(inner);
      // The widget renderer adds its view as a child, writes its errors as the node's text and
      // marks them with a class: each of these is a change of the node's children or classes.
      this.observer.observe(inner.node, { childList: true, attributes: true, attributeFilter: ['class'] });
    }
  }

  private onStatus(_: ISessionContext, status: string): void {
    if (KERNEL_GONE.has(status)) {
      this.kernelGone = true;
    }
    this.refresh();
  }

  private onKernelChanged(_: ISessionContext, change: { oldValue: unknown; newValue: unknown }): void {
    if (change.oldValue) {
      this.kernelGone = true; // another kernel; the first one a reopened notebook connects is not
    }
    this.refresh();
  }

  private refresh(): void {
    if (this.isDisposed) {
      return;
    }
    const stale = this.state === 'stale';
    this.toggleClass('xnb-panel-stale', stale);
    this.hint.setHidden(!stale);
    const inner = this._inner;
    if (inner && stale && !inner.isHidden) {
      this.innerHiddenByUs = true; // its broken view or error goes; the hint says what to do
      inner.hide();
    } else if (inner && !stale && this.innerHiddenByUs) {
      this.innerHiddenByUs = false;
      inner.show();
    }
  }

  private readonly hint: Widget;
  private readonly observer: MutationObserver;
  private _inner: IRenderMime.IRenderer | null = null;
  private innerHiddenByUs = false;
  private kernelGone = false;
  private generation = 0;
}

/** The factory for one notebook's rendermime. */
export function panelRendererFactory(context: PanelRendererContext): IRenderMime.IRendererFactory {
  return {
    safe: false, // as the widget-view it shows
    mimeTypes: [PANEL_MIME],
    createRenderer: () => new XnbPanelRenderer(context)
  };
}

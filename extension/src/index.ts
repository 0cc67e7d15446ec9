/**
 * xnb for JupyterLab: a left-sidebar panel (models, catalog, cluster, chat),
 * a command-palette entry, a launcher item and a status-bar count of ready models;
 * plain-text editing of `%%xnb chat` / `%%xnb complete` cell bodies; and the xnb panel's output
 * saying what to do once its kernel is gone (see paneloutput.ts).
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { EditorExtensionRegistry, IEditorExtensionRegistry } from '@jupyterlab/codemirror';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ModelRecord, Requester, XnbApi } from './api';
import { plainTextCellMagic } from './cellmagic';
import { h } from './dom';
import { XnbSidebar } from './panel';
import { PANEL_RANK, WIDGET_VIEW_MIME, panelRendererFactory } from './paneloutput';
import { SnippetKind, snippetCells } from './snippets';
import { XnbStore } from './state';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161"><rect x="3" y="3" width="7" height="7" rx="1.5"/><rect x="14" y="3" width="7" height="7" rx="1.5"/>
  <rect x="3" y="14" width="7" height="7" rx="1.5"/><rect x="14" y="14" width="7" height="7" rx="1.5" opacity=".5"/></g></svg>`;

export const xnbIcon = new LabIcon({ name: 'xnb:icon', svgstr: ICON_SVG });

const COMMANDS = { open: 'xnb:open-sidebar', refresh: 'xnb:refresh' };

/** `{base_url}xnb/<path>` through ServerConnection: Jupyter's token or cookie, and its XSRF header. */
export function serverRequester(settings = ServerConnection.makeSettings()): Requester {
  return (path, init = {}) =>
    ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'xnb', path), init, settings);
}

async function insertSnippet(app: JupyterFrontEnd, tracker: INotebookTracker, kind: SnippetKind,
                             model: ModelRecord): Promise<void> {
  let panel: NotebookPanel | null = tracker.currentWidget;
  if (!panel) {
    panel = await app.commands.execute('notebook:create-new', { kernelName: 'python3' }) as NotebookPanel;
  }
  await panel.context.ready;
  app.shell.activateById(panel.id);
  const notebook = panel.content;
  const cells = snippetCells(kind, model.uid, model.spec.abilities, PageConfig.getBaseUrl());
  cells.forEach((source, i) => {
    const active = notebook.activeCell;
    const reuse = i === 0 && active !== null && active.model.type === 'code' && !active.model.sharedModel.getSource().trim();
    if (!reuse) {
      NotebookActions.insertBelow(notebook);
    }
    notebook.activeCell!.model.sharedModel.setSource(source);
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'xnb-labextension:plugin',
  description: 'xnb sidebar: cluster, running models, catalog and launch, snippets, chat.',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  optional: [ICommandPalette, ILauncher, IStatusBar],
  activate: (app: JupyterFrontEnd, shell: ILabShell, tracker: INotebookTracker, palette: ICommandPalette | null,
             launcher: ILauncher | null, statusBar: IStatusBar | null) => {
    const store = new XnbStore(new XnbApi(serverRequester()));
    const sidebar = new XnbSidebar(store, { insertSnippet: (kind, model) => insertSnippet(app, tracker, kind, model) });
    sidebar.title.icon = xnbIcon;
    sidebar.title.caption = 'xnb models';
    shell.add(sidebar, 'left', { rank: 400 });

    app.commands.addCommand(COMMANDS.open, {
      label: 'xnb: Show Models',
      caption: 'Open the xnb sidebar: running models, catalog, cluster, chat',
      icon: xnbIcon,
      execute: () => shell.activateById(sidebar.id)
    });
    app.commands.addCommand(COMMANDS.refresh, {
      label: 'xnb: Refresh Models',
      execute: () => store.refreshNow()
    });
    palette?.addItem({ command: COMMANDS.open, category: 'xnb' });
    palette?.addItem({ command: COMMANDS.refresh, category: 'xnb' });
    launcher?.add({ command: COMMANDS.open, category: 'Other', rank: 10 });

    if (statusBar) {
      const item = new Widget({ node: h('div', { class: 'xnb-statusbar', title: 'xnb: models ready (click to show)' }) });
      item.node.addEventListener('click', () => void app.commands.execute(COMMANDS.open));
      const update = (): void => {
        const ready = store.readyCount;
        item.node.textContent = store.updated ? `xnb: ${ready} ready` : 'xnb';
      };
      store.changed.connect(update);
      update();
      statusBar.registerStatusItem('xnb-labextension:status', { item, align: 'left', rank: 10 });
    }

    // The status bar's count while the sidebar is closed: models only, twice a minute, and
    // nothing while the browser tab is hidden.
    const countPoll = new Poll({
      factory: () => (store.visible ? Promise.resolve() : store.refreshModels()),
      frequency: { interval: 30_000, backoff: true, max: 300_000 },
      standby: 'when-hidden',
      name: 'xnb:count'
    });
    void app.restored.then(() => countPoll.start());
  }
};

/** Every cell editor gets the `%%xnb chat` / `%%xnb complete` plain-text body (see cellmagic.ts). */
const cellMagicPlugin: JupyterFrontEndPlugin<void> = {
  id: 'xnb-labextension:cell-magic',
  description: 'Shows the body of %%xnb chat and %%xnb complete cells as plain text.',
  autoStart: true,
  requires: [IEditorExtensionRegistry],
  activate: (_app: JupyterFrontEnd, registry: IEditorExtensionRegistry) => {
    registry.addExtension({
      name: 'xnb:cell-magic-plain-text',
      factory: ({ model }) => EditorExtensionRegistry.createImmutableExtension(plainTextCellMagic(model.sharedModel.getSource()))
    });
  }
};

/** Each notebook's rendermime renders the xnb panel's own output type (see paneloutput.ts). */
const panelOutputPlugin: JupyterFrontEndPlugin<void> = {
  id: 'xnb-labextension:panel-output',
  description: 'Shows how to get the xnb panel back where its widget ended with an earlier kernel.',
  autoStart: true,
  requires: [INotebookTracker, IRenderMimeRegistry],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker, appRendermime: IRenderMimeRegistry) => {
    const attach = (panel: NotebookPanel): void => {
      const rendermime = panel.content.rendermime;
      rendermime.addFactory(panelRendererFactory({
        rendermime,
        appWidgetFactory: () => appRendermime.getFactory(WIDGET_VIEW_MIME),
        sessionContext: panel.sessionContext
      }), PANEL_RANK);
    };
    tracker.forEach(attach);
    tracker.widgetAdded.connect((_, panel) => attach(panel));
  }
};

export default [plugin, cellMagicPlugin, panelOutputPlugin];

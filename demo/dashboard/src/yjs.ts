/**
 * The Yjs documents the node holds (what GET /yjs answers), pushed with the live figures. A node
 * without Yjs sends null: the panel stays hidden.
 */
import { h, replaceChildren } from './dom'
import { fmtBytes, fmtInt } from './format'
import type { NodeModel } from './model'

export class YjsPanel {
  readonly el: HTMLElement
  private readonly body: HTMLElement
  private shown = ''

  constructor(private readonly node: NodeModel) {
    this.body = h('tbody')
    this.el = h(
      'section',
      { class: 'panel', id: 'yjs', hidden: true },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Yjs documents'), h('span', { class: 'hint' }, 'ws://HOST:PORT/yjs/NAME · replicated like views')),
      h('table', { class: 'grid' }, h('thead', {}, h('tr', {}, ...['document', 'size', 'clients'].map((t) => h('th', {}, t)))), this.body),
    )
  }

  render(): void {
    const docs = this.node.stats?.yjs
    if (!docs) return
    this.el.hidden = false
    const sig = JSON.stringify(docs)
    if (sig === this.shown) return
    this.shown = sig
    replaceChildren(
      this.body,
      docs.length
        ? docs.map((d) => h('tr', {}, h('td', { class: 'mono' }, d.name), h('td', { class: 'num' }, fmtBytes(d.bytes)), h('td', { class: 'num' }, fmtInt(d.clients))))
        : [h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'no documents yet: open ws://HOST:PORT/yjs/NAME with a y-websocket client'))],
    )
  }
}

/**
 * Views and their types, and a key browser: prefix search with pagination over
 * GET /views/:view?prefix&after&limit of the page's own node (on demand, never polled).
 */
import { apiUrl } from './api'
import { h, replaceChildren } from './dom'
import { fmtClock, fmtInt } from './format'
import type { NodeModel } from './model'

const PAGE = 12

export class KeysPanel {
  readonly el: HTMLElement
  private readonly viewsBody: HTMLElement
  private readonly select: HTMLSelectElement
  private readonly prefix: HTMLInputElement
  private readonly body: HTMLElement
  private readonly status: HTMLElement
  private readonly prev: HTMLButtonElement
  private readonly next: HTMLButtonElement
  /** The `after` of each page shown so far: Prev pops it. */
  private pages: Array<string | undefined> = [undefined]
  private nextAfter: string | null = null
  private viewNames = ''
  private shownViews = ''

  constructor(private readonly node: NodeModel) {
    this.viewsBody = h('tbody')
    this.select = h('select', { 'aria-label': 'view' }) as HTMLSelectElement
    this.prefix = h('input', { type: 'search', placeholder: 'key prefix, e.g. /docs', 'aria-label': 'key prefix', spellcheck: 'false' }) as HTMLInputElement
    this.body = h('tbody')
    this.status = h('span', { class: 'muted' })
    this.prev = h('button', { class: 'btn small', type: 'button' }, '‹ Prev') as HTMLButtonElement
    this.next = h('button', { class: 'btn small', type: 'button' }, 'Next ›') as HTMLButtonElement
    const form = h('form', { class: 'key-search' }, this.select, this.prefix, h('button', { class: 'btn small primary', type: 'submit' }, 'Search'))
    form.addEventListener('submit', (e) => {
      e.preventDefault()
      this.pages = [undefined]
      void this.load()
    })
    this.select.addEventListener('change', () => {
      this.pages = [undefined]
      void this.load()
    })
    this.prev.addEventListener('click', () => {
      if (this.pages.length > 1) this.pages.pop()
      void this.load()
    })
    this.next.addEventListener('click', () => {
      if (this.nextAfter === null) return
      this.pages.push(this.nextAfter)
      void this.load()
    })
    this.el = h(
      'section',
      { class: 'panel', id: 'keys' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Views and keys'), h('span', { class: 'hint' }, 'this node')),
      h('table', { class: 'grid views' }, h('thead', {}, h('tr', {}, ...['view', 'type', 'keys', 'bucket', 'batch horizon'].map((t) => h('th', {}, t)))), this.viewsBody),
      form,
      h('table', { class: 'grid keys' }, h('thead', {}, h('tr', {}, h('th', {}, 'key'), h('th', {}, 'value'))), this.body),
      h('div', { class: 'pager' }, this.prev, this.status, this.next),
    )
  }

  render(): void {
    const st = this.node.stats
    if (!st) return
    const sig = JSON.stringify(st.views)
    if (sig === this.shownViews) return
    this.shownViews = sig
    replaceChildren(
      this.viewsBody,
      st.views.map((v) =>
        h(
          'tr',
          { 'data-view': v.name },
          h('td', { class: 'mono' }, v.name),
          h('td', {}, h('span', { class: `type ${v.type}` }, v.type)),
          h('td', { class: 'num' }, fmtInt(v.keys)),
          h('td', {}, v.bucketMs === null ? '–' : v.bucketMs % 60_000 === 0 ? `${v.bucketMs / 60_000} min` : `${v.bucketMs / 1000} s`),
          h('td', {}, v.horizon === null ? '–' : `up to ${fmtClock(v.horizon)}`),
        ),
      ),
    )
    const names = st.views.map((v) => v.name).join('\u0000')
    if (names !== this.viewNames) {
      const keep = this.select.value
      this.viewNames = names
      replaceChildren(this.select, st.views.map((v) => h('option', { value: v.name }, v.name)))
      if (keep && st.views.some((v) => v.name === keep)) this.select.value = keep
      if (!keep) void this.load()
    }
  }

  private async load(): Promise<void> {
    const view = this.select.value
    if (!view) return
    const after = this.pages[this.pages.length - 1]
    const q = new URLSearchParams({ prefix: this.prefix.value, limit: String(PAGE) })
    if (after !== undefined) q.set('after', after)
    this.status.textContent = 'loading…'
    try {
      const res = await fetch(apiUrl(this.node.base, `/views/${encodeURIComponent(view)}?${q}`))
      const body = (await res.json()) as { items?: Array<{ key: string; value: unknown }>; next?: string | null; error?: { message: string } }
      if (!res.ok || !body.items) throw new Error(body.error?.message ?? `HTTP ${res.status}`)
      this.nextAfter = body.next ?? null
      replaceChildren(
        this.body,
        body.items.length
          ? body.items.map((it) => h('tr', {}, h('td', { class: 'mono key' }, it.key), h('td', { class: 'mono' }, short(it.value))))
          : [h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'no keys with this prefix'))],
      )
      this.status.textContent = `page ${this.pages.length}`
    } catch (err) {
      this.status.textContent = `could not list keys: ${(err as Error).message}`
    }
    this.prev.disabled = this.pages.length <= 1
    this.next.disabled = this.nextAfter === null
  }
}

function short(v: unknown): string {
  const s = JSON.stringify(v)
  if (Array.isArray(v) && s.length > 90) return `[${v.length} members] ${s.slice(0, 70)}…`
  return s.length > 90 ? `${s.slice(0, 88)}…` : s
}

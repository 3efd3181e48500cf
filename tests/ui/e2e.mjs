// Drives the built UI in headless Chromium (playwright-core, the system's /usr/bin/chromium) and
// records what a person would see, for tests/ui/test_ui_e2e.py to compare with the API's JSON.
//
//   node tests/ui/e2e.mjs '{"url": ..., "out": DIR, "dictionary": ID, "feature": N, "text": "...",
//                           "serverPid": PID, "chromium": "/usr/bin/chromium"}'
//
// Writes DIR/observed.json and DIR/*.png. With serverPid it stops that server last and records
// the page's error state. Exits non-zero (with the step that failed) if a step times out.
import { createRequire } from 'node:module'
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { chromium } = createRequire(join(repo, 'ui', 'package.json'))('playwright-core')

const args = JSON.parse(process.argv[2])
const { url, out, dictionary, feature, text } = args
mkdirSync(out, { recursive: true })
const observed = { steps: [] }
const save = () => writeFileSync(join(out, 'observed.json'), JSON.stringify(observed, null, 1))
let step = 'start'
const mark = (name) => {
  step = name
  observed.steps.push(name)
}

const browser = await chromium.launch({
  executablePath: args.chromium ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
})
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
observed.console = []
page.on('console', (m) => m.type() === 'error' && observed.console.push(m.text()))
page.on('pageerror', (e) => observed.console.push(`pageerror: ${e.message}`))
page.setDefaultTimeout(20000)
const shot = async (name, opts = {}) => {
  await page.mouse.move(0, 0) // no hover outline in the pictures
  await page.screenshot({ path: join(out, `${name}.png`), ...opts })
}

/** Every highlighted token in ``root``: its raw string, value, background and visible text. */
const readTokens = (root) =>
  root.$$eval('.tok', (spans) =>
    spans.map((s) => ({ token: s.dataset.token, act: Number(s.dataset.act), text: s.textContent,
      background: getComputedStyle(s).backgroundColor, title: s.title, center: s.classList.contains('tok-center') })))
const featureReady = (i) => page.waitForSelector(`[data-feature-index="${i}"][data-loading="false"]`)

try {
  mark('dictionaries')
  await page.goto(`${url}/#/`)
  await page.waitForSelector('[data-testid="dictionaries"] tbody tr')
  observed.dictionaries = await page.$$eval('[data-testid="dictionaries"] tbody tr', (rows) =>
    rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent.trim())))
  await shot('dictionaries')

  mark('dictionary')
  await page.click(`[data-testid="dictionaries"] a[href="#/d/${encodeURIComponent(dictionary)}"]`)
  await page.waitForSelector('[data-testid="feature-table"] tbody tr a')
  await page.waitForSelector('[data-testid="density-histogram"] .recharts-bar-rectangle')
  observed.densityBins = Number(await page.getAttribute('[data-testid="density-histogram"]', 'data-bins'))
  observed.densityBars = await page.$$eval('[data-testid="density-histogram"] .recharts-bar-rectangle', (b) => b.length)
  const tableIndices = () =>
    page.$$eval('[data-testid="feature-table"] tbody tr a', (as) => as.map((a) => Number(a.textContent.replace('#', ''))))
  observed.tableByMax = await tableIndices()
  await shot('dictionary', { fullPage: true })

  mark('sort by density')
  await page.click('th:has-text("Density")')
  await page.waitForSelector('th[aria-sort="descending"]:has-text("Density")')
  await page.waitForFunction(() => !document.querySelector('.stale, .status-loading'))
  observed.tableByDensity = await tableIndices()

  mark('pagination')
  const settled = async (hashPart) => {
    await page.waitForFunction((part) => location.hash.includes(part), hashPart)
    await page.waitForFunction(() => !document.querySelector('.stale, .status-loading'))
  }
  const firstOfPage1 = observed.tableByDensity[0]
  await page.click('.pager button:has-text("Next")')
  await settled('page=1')
  // the hash changes before the new rows render: wait until page 1's first row has gone
  await page.waitForFunction((first) => {
    const a = document.querySelector('[data-testid="feature-table"] tbody tr a')
    return a && Number(a.textContent.replace('#', '')) !== first
  }, firstOfPage1)
  observed.tableByDensityPage2 = await tableIndices()
  observed.pagerPage2 = await page.textContent('.pager span')

  mark('filters')
  await page.getByLabel('Density ≥').fill(String(args.densityMin))
  await page.getByLabel('Max act ≥').fill(String(args.maxActMin))
  await page.click('.filters button[type="submit"]')
  await settled('amin=')
  // as with pagination, the hash changes before the filtered answer renders: wait for its count
  await page.waitForFunction(() => (document.querySelector('.card-head .muted')?.textContent || '').includes('match'))
  observed.tableFiltered = await tableIndices()
  observed.filteredTotal = await page.textContent('.card-head .muted')
  observed.filteredHash = await page.evaluate(() => location.hash)

  mark('search')
  await page.fill('input[aria-label="Search features by token"]', args.search)
  await page.press('input[aria-label="Search features by token"]', 'Enter')
  await page.waitForSelector('[data-testid="search-results"] a.chip, [data-testid="search-results"] .status-empty')
  observed.searchResults = await page.$$eval('[data-testid="search-results"] a.chip', (as) => as.map((a) => a.getAttribute('href')))
  await shot('search', { fullPage: false })

  mark('random')
  await page.click('button:has-text("Random feature")')
  await page.waitForSelector('[data-feature-index][data-loading="false"]')
  observed.random = Number(await page.getAttribute('[data-feature-index]', 'data-feature-index'))

  mark('feature')
  await page.click(`nav.crumbs a[href="#/d/${encodeURIComponent(dictionary)}"]`)
  await page.waitForSelector('th[aria-sort="descending"]:has-text("Max activation")')
  await page.waitForFunction(() => !document.querySelector('.stale, .status-loading'))
  await page.click(`[data-testid="feature-table"] a[href="#/d/${encodeURIComponent(dictionary)}/f/${feature}"]`)
  await featureReady(feature)
  await page.waitForSelector('[data-testid="activation-histogram"] .recharts-bar-rectangle')
  observed.feature = {
    hash: await page.evaluate(() => location.hash),
    top: await page.$$eval('[data-testid="top-examples"] > li', (lis) => lis.map((li) => li.querySelector('.example-value').textContent)),
    topTokens: [],
    maxStat: await page.textContent('[data-testid="stat-max"] .stat-value'),
    neighbours: await page.$$eval('[data-testid="neighbours"] a', (as) => as.map((a) => a.getAttribute('href'))),
    activationBins: Number(await page.getAttribute('[data-testid="activation-histogram"]', 'data-bins')),
  }
  for (const li of await page.$$('[data-testid="top-examples"] > li')) observed.feature.topTokens.push(await readTokens(li))
  await shot('feature', { fullPage: true })
  await shot('feature-viewport')

  mark('arrow keys')
  await page.keyboard.press('ArrowRight')
  await featureReady(feature + 1)
  observed.afterRight = await page.evaluate(() => location.hash)
  await page.keyboard.press('ArrowLeft')
  await featureReady(feature)
  observed.afterLeft = await page.evaluate(() => location.hash)

  mark('live inference')
  await page.fill('textarea[aria-label="text for live inference"]', text)
  await page.click('[data-testid="live"] button[type="submit"]')
  await page.waitForSelector('[data-testid="live-result"]', { timeout: 90000 })
  observed.live = await readTokens(await page.$('[data-testid="live-result"]'))
  await page.locator('[data-testid="live"]').scrollIntoViewIfNeeded()
  await shot('live')

  if (args.explanation) {
    mark('explanation')
    await page.click('.card-head button:has-text("Edit")')
    await page.fill('.explain-form textarea', args.explanation)
    await page.fill('.explain-form input[aria-label="write token"]', args.writeToken)
    await page.click('.explain-form button[type="submit"]')
    await page.waitForSelector('[data-testid="explanation"]')
    observed.explanation = await page.textContent('[data-testid="explanation"]')
  }

  mark('not found')
  await page.goto(`${url}/#/d/${encodeURIComponent(dictionary)}/f/999999`)
  await page.waitForSelector('.status-notfound')
  observed.notFound = await page.textContent('.status-notfound')
  await shot('not-found')

  if (args.serverPid) {
    mark('backend down')
    await page.goto(`${url}/#/d/${encodeURIComponent(dictionary)}/f/${feature}`)
    await featureReady(feature)
    process.kill(args.serverPid, 'SIGTERM')
    for (let i = 0; i < 100; i++) {
      try {
        await fetch(`${url}/api/health`)
      } catch {
        break
      }
      await new Promise((r) => setTimeout(r, 100))
    }
    await page.keyboard.press('ArrowRight')
    await page.waitForSelector('[role="alert"][data-error-kind="unreachable"]')
    observed.backendDown = await page.textContent('[role="alert"][data-error-kind="unreachable"]')
    await shot('backend-down')
  }
  mark('done')
} catch (e) {
  observed.error = `step "${step}": ${e.message}`
  await shot(`failed-${step.replace(/\W+/g, '-')}`).catch(() => {})
} finally {
  save()
  await browser.close()
}
if (observed.error) {
  console.error(observed.error)
  process.exit(1)
}

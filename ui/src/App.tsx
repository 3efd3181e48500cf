import { useEffect } from 'react'
import { href, useRoute } from './lib/router'
import { DictionariesPage } from './pages/DictionariesPage'
import { DictionaryPage } from './pages/DictionaryPage'
import { FeaturePage } from './pages/FeaturePage'

export function App() {
  const route = useRoute()
  // A new page (not a new sort/filter/page of the same table) starts at the top.
  const pageKey = route.page === 'feature' ? `f:${route.id}:${route.index}` : route.page === 'dictionary' ? `d:${route.id}` : route.page
  useEffect(() => {
    document.title =
      route.page === 'feature' ? `#${route.index} · ${route.id} · saes` : route.page === 'dictionary' ? `${route.id} · saes` : 'saes features'
    window.scrollTo(0, 0)
  }, [pageKey])
  return (
    <>
      <header className="topbar">
        <a href={href.dictionaries()} className="brand">
          saes <span>feature browser</span>
        </a>
      </header>
      {route.page === 'dictionaries' && <DictionariesPage />}
      {route.page === 'dictionary' && <DictionaryPage id={route.id} params={route.params} />}
      {route.page === 'feature' && <FeaturePage id={route.id} index={route.index} />}
      {route.page === 'unknown' && (
        <main className="page">
          <div className="status status-notfound" role="alert">
            <strong>Not found</strong>
            <div>
              No page at <code>#{route.hash}</code>. <a href={href.dictionaries()}>All dictionaries</a>
            </div>
          </div>
        </main>
      )}
    </>
  )
}

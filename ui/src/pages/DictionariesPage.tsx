import { api, type DictionarySummary } from '../lib/api'
import { useApi } from '../lib/useApi'
import { href } from '../lib/router'
import { Empty, ErrorMessage, Loading } from '../components/Status'
import { fmt } from '../lib/format'

/** Every analyzed SAE ("dictionary") with its headline numbers. */
export function DictionariesPage() {
  const { data, error, loading, reload } = useApi<DictionarySummary[]>(api.dictionaries())
  return (
    <main className="page">
      <h1>Dictionaries</h1>
      <p className="lede">Sparse autoencoders whose features have been analyzed (<code>python -m saes.analyze</code>).</p>
      {error ? (
        <ErrorMessage error={error} onRetry={reload} />
      ) : loading && !data ? (
        <Loading what="dictionaries" minHeight={120} />
      ) : !data || data.length === 0 ? (
        <Empty>
          No dictionaries yet. Analyze an SAE with <code>python -m saes.analyze sae=&lt;run folder&gt;</code>, then reload.
        </Empty>
      ) : (
        <table className="table" data-testid="dictionaries">
          <thead>
            <tr>
              <th>Dictionary</th>
              <th>Model</th>
              <th>Site</th>
              <th>Variant</th>
              <th className="num">d_sae</th>
              <th className="num">L0</th>
              <th className="num">Explained variance</th>
            </tr>
          </thead>
          <tbody>
            {data.map((d) => (
              <tr key={d.id}>
                <td>
                  {d.analyzed ? <a href={href.dictionary(d.id)}>{d.id}</a> : <span title="not analyzed yet">{d.id}</span>}
                </td>
                <td>{d.model ?? '–'}</td>
                <td>
                  <code>{d.site ?? '–'}</code>
                </td>
                <td>{d.variant ?? '–'}</td>
                <td className="num">{fmt.int(d.d_sae)}</td>
                <td className="num">{fmt.num(d.l0)}</td>
                <td className="num">{fmt.num(d.explained_variance)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  )
}

import type { Example } from '../lib/api'
import { formatActivation } from '../lib/highlight'
import { TokenText } from './TokenText'
import { Empty } from './Status'

/** A list of examples: the firing token's value, then its window of highlighted tokens. */
export function Examples({ examples, max, testId }: { examples: Example[]; max: number; testId?: string }) {
  if (examples.length === 0) return <Empty>No examples.</Empty>
  return (
    <ol className="examples" data-testid={testId}>
      {examples.map((e, i) => (
        <li key={i} className="example">
          <span className="example-value" title="activation of the firing token">
            {formatActivation(e.value)}
          </span>
          <TokenText tokens={e.tokens} acts={e.acts} max={max} center={e.center} />
        </li>
      ))}
    </ol>
  )
}

import { tokenCells } from '../lib/highlight'

/** Tokens drawn inline, each with its activation as background and exact value in the title.
 * Text goes through React (escaped): a token ``<b>`` shows as ``<b>``, never as markup. */
export function TokenText({ tokens, acts, max, center = -1 }: { tokens: string[]; acts: number[]; max: number; center?: number }) {
  return (
    <span className="tokens">
      {tokenCells(tokens, acts, max, center).map((cell, i) => (
        <span
          key={i}
          className={cell.isCenter ? 'tok tok-center' : 'tok'}
          style={{ background: cell.background }}
          title={cell.title}
          data-act={cell.value}
          data-token={tokens[i]}
        >
          {cell.text}
        </span>
      ))}
    </span>
  )
}

import { Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts'
import type { BinRow } from '../lib/histogram'
import { Empty } from './Status'

/** A bar chart of histogram rows at a fixed height (no layout jump while it measures its width). */
export function Histogram({
  rows,
  xLabel,
  tooltip,
  height = 180,
  color = '#2563eb',
  testId,
}: {
  rows: BinRow[]
  xLabel: string
  tooltip: (row: BinRow) => string
  height?: number
  color?: string
  testId?: string
}) {
  if (rows.length === 0) return <div style={{ height }} className="chart-empty"><Empty>No data to plot.</Empty></div>
  return (
    <div className="chart" style={{ height }} data-testid={testId} data-bins={rows.length}>
      <ResponsiveContainer width="100%" height="100%">
        <BarChart data={rows} margin={{ top: 8, right: 8, bottom: 18, left: 0 }} barCategoryGap={1}>
          <CartesianGrid strokeDasharray="3 3" vertical={false} stroke="#e5e7eb" />
          <XAxis
            dataKey="label"
            tick={{ fontSize: 11, fill: '#6b7280' }}
            interval="preserveStartEnd"
            minTickGap={18}
            label={{ value: xLabel, position: 'insideBottom', offset: -12, fontSize: 11, fill: '#6b7280' }}
          />
          <YAxis allowDecimals={false} width={40} tick={{ fontSize: 11, fill: '#6b7280' }} />
          <Tooltip
            cursor={{ fill: 'rgba(37, 99, 235, 0.08)' }}
            content={({ active, payload }) => {
              const row = active && payload?.[0] ? (payload[0].payload as BinRow) : null
              return row ? (
                <div className="chart-tip">
                  <div>{tooltip(row)}</div>
                  <strong>{row.count.toLocaleString()}</strong>
                </div>
              ) : null
            }}
          />
          <Bar dataKey="count" fill={color} isAnimationActive={false} />
        </BarChart>
      </ResponsiveContainer>
    </div>
  )
}

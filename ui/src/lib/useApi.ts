import { useCallback, useEffect, useState } from 'react'
import { apiFetch } from './api'

export interface ApiState<T> {
  /** The latest answer; kept while a new path loads (no blank page between two features). */
  data: T | undefined
  /** The path ``data`` answers. */
  dataPath: string | null
  error: unknown
  loading: boolean
  reload: () => void
}

/** GET ``path`` (null: nothing) whenever it changes; older answers arriving late are dropped. */
export function useApi<T>(path: string | null): ApiState<T> {
  const [state, setState] = useState<{ data: T | undefined; dataPath: string | null; error: unknown; loading: boolean }>({
    data: undefined,
    dataPath: null,
    error: undefined,
    loading: path !== null,
  })
  const [nonce, setNonce] = useState(0)

  useEffect(() => {
    if (path === null) return
    const ctrl = new AbortController()
    setState((s) => ({ ...s, loading: true, error: undefined }))
    apiFetch<T>(path, { signal: ctrl.signal }).then(
      (data) => setState({ data, dataPath: path, error: undefined, loading: false }),
      (error) => {
        if (!ctrl.signal.aborted) setState((s) => ({ ...s, error, loading: false }))
      },
    )
    return () => ctrl.abort()
  }, [path, nonce])

  const reload = useCallback(() => setNonce((n) => n + 1), [])
  // Loading from the very render that changes the path (not one effect later): no frame shows old data as current.
  const loading = state.loading || (path !== null && state.dataPath !== path && state.error === undefined)
  return { ...state, loading, reload }
}

import { ApiError, backendLabel } from '../lib/api'

export function Loading({ what, minHeight }: { what: string; minHeight?: number }) {
  return (
    <div className="status status-loading" role="status" style={{ minHeight }}>
      <span className="spinner" aria-hidden /> Loading {what}…
    </div>
  )
}

export function Empty({ children }: { children: React.ReactNode }) {
  return <div className="status status-empty">{children}</div>
}

/** An error as a person should read it: backend down, not found, or the server's own message. */
export function ErrorMessage({ error, onRetry, notFound }: { error: unknown; onRetry?: () => void; notFound?: React.ReactNode }) {
  let title = 'Something went wrong'
  let body: React.ReactNode = error instanceof Error ? error.message : String(error)
  let cls = 'status status-error'
  if (error instanceof ApiError && error.kind === 'unreachable') {
    title = 'Backend unreachable'
    body = (
      <>
        The backend at <code>{backendLabel()}</code> is unreachable. Start it with{' '}
        <code>uvicorn server.app:app --port 24577</code> (and check <code>VITE_BACKEND_URL</code> in dev mode).
      </>
    )
  } else if (error instanceof ApiError && error.status === 404) {
    title = 'Not found'
    body = notFound ?? error.message
    cls = 'status status-notfound'
    onRetry = undefined // retrying cannot help
  } else if (error instanceof ApiError) {
    title = `Error ${error.status}`
  }
  return (
    <div className={cls} role="alert" data-error-kind={error instanceof ApiError ? error.kind : 'other'}>
      <strong>{title}</strong>
      <div>{body}</div>
      {onRetry && (
        <button type="button" className="btn" onClick={onRetry}>
          Retry
        </button>
      )}
    </div>
  )
}

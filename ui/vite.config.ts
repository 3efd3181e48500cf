/// <reference types="vitest/config" />
import react from '@vitejs/plugin-react'
import { defineConfig } from 'vite'

// Dev server on 24576 (the API's CORS default); `npm run build` writes dist/, which the FastAPI
// app serves at / (same origin: the built UI calls /api unless VITE_BACKEND_URL is set).
export default defineConfig({
  plugins: [react()],
  build: { chunkSizeWarningLimit: 900 },
  server: { port: 24576, strictPort: true },
  preview: { port: 24576, strictPort: true },
  test: { include: ['src/**/*.test.{ts,tsx}'], environment: 'node' },
})

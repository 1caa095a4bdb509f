// Where the backend is, read at run time (not build time): http://backend:8000 in Docker.
export const DEFAULT_BACKEND_URL = "http://localhost:8000";

export function backendUrl() {
  return (process.env.BACKEND_URL || DEFAULT_BACKEND_URL).replace(/\/+$/, "");
}

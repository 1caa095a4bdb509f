// Home page: which release runs here (frontend bundle and backend, the latter asked at request time).
import { backendUrl } from "../lib/backend";

export const dynamic = "force-dynamic";

const BACKEND_TIMEOUT_MS = 3000;

async function backendVersion() {
  try {
    const response = await fetch(`${backendUrl()}/api/v1/version`, {
      cache: "no-store",
      signal: AbortSignal.timeout(BACKEND_TIMEOUT_MS),
    });
    return response.ok ? (await response.json()).version : `unavailable (HTTP ${response.status})`;
  } catch {
    return "unreachable";
  }
}

export default async function Home() {
  return (
    <main>
      <h1>Residency Scheduler</h1>
      <p>A stand-in for the real application, used to test rsdeploy deployments.</p>
      <dl>
        <dt>Frontend version</dt>
        <dd id="frontend-version">{process.env.NEXT_PUBLIC_APP_VERSION}</dd>
        <dt>Backend version</dt>
        <dd id="backend-version">{await backendVersion()}</dd>
      </dl>
    </main>
  );
}

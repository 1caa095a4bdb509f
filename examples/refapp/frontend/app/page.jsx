// Home page: which release runs here (this server's version.json, and the backend's, asked at
// request time).
import { readFileSync } from "node:fs";
import { backendUrl } from "../lib/backend";

export const dynamic = "force-dynamic";

const BACKEND_TIMEOUT_MS = 3000;

// The release this server runs: version.json beside server.js (its working directory).
function frontendVersion() {
  return JSON.parse(readFileSync("version.json", "utf8")).version;
}

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
        <dd id="frontend-version">{frontendVersion()}</dd>
        <dt>Backend version</dt>
        <dd id="backend-version">{await backendVersion()}</dd>
      </dl>
    </main>
  );
}

// Next.js config of the Residency Scheduler stand-in (rsdeploy reference app).
//
// /api/* reaches the backend through app/api/[...path]/route.js, not through `rewrites()`:
// a standalone build freezes rewrites (and their BACKEND_URL) at build time, whereas the route
// handler reads BACKEND_URL when the server runs, so one image serves every deployment.
import { readFileSync } from "node:fs";

const { version } = JSON.parse(readFileSync(new URL("./version.json", import.meta.url), "utf8"));

/** @type {import('next').NextConfig} */
const nextConfig = {
  output: "standalone",
  poweredByHeader: false,
  env: {
    // Inlined at build time: the release this bundle was built from.
    NEXT_PUBLIC_APP_VERSION: process.env.NEXT_PUBLIC_APP_VERSION || version,
  },
};

export default nextConfig;

// Next.js config of the Residency Scheduler stand-in (rsdeploy reference app).
//
// /api/* reaches the backend through app/api/[...path]/route.js, not through `rewrites()`:
// a standalone build freezes rewrites (and their BACKEND_URL) at build time, whereas the route
// handler reads BACKEND_URL when the server runs, so one image serves every deployment.
// The release's version is read when a page is served (version.json next to server.js), not
// inlined: every release of this frontend shares one build.

/** @type {import('next').NextConfig} */
const nextConfig = {
  output: "standalone",
  poweredByHeader: false,
};

export default nextConfig;

// After `next build`: put the static assets, public/ and the release's version.json next to the
// standalone server, so that `node .next/standalone/server.js` serves everything (PM2 from
// source). The image's build has no version.json (one build serves every release): its last
// stage adds it.
import { cpSync, existsSync } from "node:fs";

cpSync(".next/static", ".next/standalone/.next/static", { recursive: true });
cpSync("public", ".next/standalone/public", { recursive: true });
if (existsSync("version.json")) {
  cpSync("version.json", ".next/standalone/version.json");
}

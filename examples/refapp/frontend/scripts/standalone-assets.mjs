// After `next build`: put the static assets and public/ next to the standalone server, so that
// `node .next/standalone/server.js` serves everything (PM2 from source and the image alike).
import { cpSync } from "node:fs";

cpSync(".next/static", ".next/standalone/.next/static", { recursive: true });
cpSync("public", ".next/standalone/public", { recursive: true });

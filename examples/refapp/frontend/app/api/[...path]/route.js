// Same-origin proxy: /api/* -> BACKEND_URL/api/* (what upstream does with Next.js rewrites,
// but with BACKEND_URL read at run time; see next.config.mjs).
import { backendUrl } from "../../../lib/backend";

export const dynamic = "force-dynamic";

// Headers that describe one hop, not the message: never forwarded.
const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
  "transfer-encoding", "upgrade", "host", "content-length",
]);
// fetch() already decoded the body, so its encoding and length no longer apply.
const DECODED = new Set(["content-encoding", "content-length", "transfer-encoding", "connection"]);

function forwardable(headers, skip) {
  const out = new Headers();
  for (const [name, value] of headers) {
    if (!skip.has(name)) out.append(name, value);
  }
  return out;
}

async function proxy(request) {
  const { pathname, search } = new URL(request.url);
  const hasBody = !["GET", "HEAD"].includes(request.method);
  let upstream;
  try {
    upstream = await fetch(`${backendUrl()}${pathname}${search}`, {
      method: request.method,
      headers: forwardable(request.headers, HOP_BY_HOP),
      body: hasBody ? await request.arrayBuffer() : undefined,
      redirect: "manual",
      cache: "no-store",
    });
  } catch (error) {
    console.error(`backend unreachable at ${backendUrl()}: ${error.cause?.code ?? error.message}`);
    return Response.json({ detail: "backend unreachable" }, { status: 502 });
  }
  return new Response(upstream.body, {
    status: upstream.status,
    headers: forwardable(upstream.headers, DECODED),
  });
}

export { proxy as GET, proxy as POST, proxy as PUT, proxy as PATCH, proxy as DELETE, proxy as OPTIONS };

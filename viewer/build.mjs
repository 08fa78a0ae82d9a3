// Builds the touch viewer into dist/phone: the bundle, its decoding worker, the codecs' WebAssembly (the
// transfer syntaxes the Storage SCP accepts) and the stylesheet. Only what is served ends up in dist/phone.
// Run by deployments/setup.sh after `npm ci` (pinned by package-lock.json); nothing is fetched at run time.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'dist', 'phone');
const modules = join(here, 'node_modules', '@cornerstonejs');

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2020'],
  legalComments: 'linked',
  logLevel: 'warning',
  plugins: [nodeShims()],
};

// The codecs' Emscripten glue (and a library of the core) mention Node's modules in branches a browser never
// takes: they get empty stand-ins (events: a minimal emitter, as a class must exist to be extended).
function nodeShims() {
  const names = /^(node:)?(fs|path|crypto|module|url|worker_threads|events|stream|util|os)$/;
  return {
    name: 'node-shims',
    setup(b) {
      b.onResolve({ filter: names }, (args) => ({ path: args.path.replace(/^node:/, ''), namespace: 'shim' }));
      b.onLoad({ filter: /.*/, namespace: 'shim' }, (args) => ({
        contents:
          args.path === 'events'
            ? 'export class EventEmitter { on() { return this; } once() { return this; } off() { return this; } ' +
              'emit() { return false; } removeListener() { return this; } } export default EventEmitter;'
            : 'export default {};',
        loader: 'js',
      }));
    },
  };
}

await build({ ...common, entryPoints: [join(here, 'src', 'viewer.js')], outfile: join(out, 'viewer.js') });
await build({
  ...common,
  entryPoints: [join(modules, 'dicom-image-loader', 'dist', 'esm', 'decodeImageFrameWorker.js')],
  outfile: join(out, 'decodeImageFrameWorker.js'),
});

// The decoders' WebAssembly, found by name under wasmBasePath (/viewer/).
const wasm = {
  'codec-openjpeg/dist/openjpegwasm_decode.wasm': 'openjpegwasm_decode.wasm', // JPEG 2000
  'codec-openjph/dist/openjphjs.wasm': 'openjphjs.wasm', // HTJ2K
  'codec-charls/dist/charlswasm_decode.wasm': 'charlswasm_decode.wasm', // JPEG-LS
  'codec-libjpeg-turbo-8bit/dist/libjpegturbowasm_decode.wasm': 'libjpegturbowasm_decode.wasm', // JPEG baseline
};
for (const [from, to] of Object.entries(wasm)) copyFileSync(join(modules, from), join(out, to));
copyFileSync(join(here, 'src', 'viewer.css'), join(out, 'viewer.css'));

// gzip twins, served to browsers that take gzip (the API picks them; nginx compresses on its own too).
for (const name of readdirSync(out)) {
  if (/\.(js|css|wasm)$/.test(name)) writeFileSync(join(out, `${name}.gz`), gzipSync(readFileSync(join(out, name)), { level: 9 }));
}

let total = 0;
for (const name of readdirSync(out)) total += statSync(join(out, name)).size;
console.log(`touch viewer built: ${readdirSync(out).length} files, ${(total / 1048576).toFixed(1)} MiB in ${out}`);

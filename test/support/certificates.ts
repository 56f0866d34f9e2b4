import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A certificate and its private key, as files and as PEM text. */
export interface KeyPair {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
  readonly key: string;
  /** SHA-256 of the certificate, as `openssl x509 -fingerprint` gives it. */
  readonly fingerprint: string;
}

/** A certificate authority that signs certificates for one test file. */
export interface CertificateAuthority extends KeyPair {
  /** A certificate for a server reachable as 127.0.0.1, ::1 and localhost. */
  issueServer(commonName: string): Promise<KeyPair>;
  /** A certificate that a client presents, such as a worker host's. */
  issueClient(commonName: string): Promise<KeyPair>;
}

/**
 * Makes certificates with the `openssl` command in a temporary directory,
 * valid for one day; `remove` deletes them all.
 */
export interface CertificateWorkshop {
  createAuthority(commonName: string): Promise<CertificateAuthority>;
  remove(): Promise<void>;
}

export async function openCertificateWorkshop(): Promise<CertificateWorkshop> {
  const dir = await mkdtemp(join(tmpdir(), "dl-certificates-"));
  let count = 0;
  const nextName = (commonName: string) =>
    join(dir, `${++count}-${commonName.replace(/[^a-z0-9-]/gi, "_")}`);

  const keyPair = async (base: string): Promise<KeyPair> => {
    const certFile = `${base}.crt`;
    const keyFile = `${base}.key`;
    return {
      certFile,
      keyFile,
      cert: await readFile(certFile, "utf8"),
      key: await readFile(keyFile, "utf8"),
      fingerprint: await fingerprintOf(certFile),
    };
  };

  const issue = async (
    ca: KeyPair,
    commonName: string,
    extensions: string,
  ): Promise<KeyPair> => {
    const base = nextName(commonName);
    await run("openssl", [
      "req",
      "-new",
      ...NEW_KEY,
      "-keyout",
      `${base}.key`,
      "-out",
      `${base}.csr`,
      "-subj",
      `/CN=${commonName}`,
    ]);
    await writeFile(`${base}.ext`, extensions);
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      `${base}.csr`,
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-set_serial",
      `0x${randomBytes(8).toString("hex")}`,
      "-days",
      "1",
      "-extfile",
      `${base}.ext`,
      "-out",
      `${base}.crt`,
    ]);
    return keyPair(base);
  };

  return {
    async createAuthority(commonName) {
      const base = nextName(commonName);
      await run("openssl", [
        "req",
        "-x509",
        ...NEW_KEY,
        "-keyout",
        `${base}.key`,
        "-out",
        `${base}.crt`,
        "-days",
        "1",
        "-subj",
        `/CN=${commonName}`,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
      ]);
      const ca = await keyPair(base);
      return {
        ...ca,
        issueServer: (name) =>
          issue(
            ca,
            name,
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
          ),
        issueClient: (name) => issue(ca, name, "extendedKeyUsage=clientAuth\n"),
      };
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** An EC P-256 key without a passphrase: quick to make, accepted everywhere. */
const NEW_KEY = [
  "-newkey",
  "ec",
  "-pkeyopt",
  "ec_paramgen_curve:prime256v1",
  "-nodes",
];

/**
 * The certificate's SHA-256 fingerprint as lower-case hex without colons,
 * the form the service stores and compares.
 */
async function fingerprintOf(certFile: string): Promise<string> {
  const { stdout } = await run("openssl", [
    "x509",
    "-in",
    certFile,
    "-noout",
    "-fingerprint",
    "-sha256",
  ]);
  // "sha256 Fingerprint=AB:CD:..."
  const hex = stdout.trim().split("=")[1];
  if (!hex) throw new Error(`openssl printed no fingerprint: ${stdout}`);
  return hex.replaceAll(":", "").toLowerCase();
}

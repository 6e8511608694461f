// The input image of a model that starts from one: picked by the file dialog, dropped on the page
// or pasted, previewed, and uploaded at once (POST /api/uploads, the raw file) with a progress bar.
// The job then names it `upload:<upload_id>`; the service hands fal a URL it can fetch.

import { uploadFile } from "/static/vendor/fal-jobs-client.js";

const $ = (selector, root = document) => root.querySelector(selector);

// A model whose schema the service never had (`fields: null`): the id says whether it takes an image.
const IMAGE_MODELS = /\/(image-to-video|image-to-image)$/;
const TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);

/** The input field a model takes its image in, or null when it takes none: read from the model's
 * own fields as GET /api/models describes them (`models`, that answer). */
export function imageField(modelId, models = []) {
  const model = models.find((entry) => entry.model_id === modelId);
  if (model && Array.isArray(model.fields)) {
    const field = model.fields.find((entry) => entry.file === "image");
    return field ? field.name : null;
  }
  return IMAGE_MODELS.test(modelId || "") ? "image_url" : null;
}

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** POST /api/uploads (the package's uploader: XMLHttpRequest, for its progress); resolves its 201
 * body, or rejects with FalJobsError (`status`, the service's `message`). */
async function send(file, csrfToken, onProgress) {
  try {
    return await uploadFile(file, {
      csrfToken,
      onProgress: ({ fraction }) => fraction !== undefined && onProgress(fraction),
    });
  } catch (error) {
    if (error.status === 0) error.message = "The upload failed: the connection broke; try again.";
    throw error;
  }
}

/**
 * The picker in `root` (the form's image fieldset). `csrfToken()` gives the session's token;
 * `onSessionLost` is called on a 401. `value()` resolves the chosen image's `upload:<id>` (waiting
 * for an upload under way), or rejects with a message for the form.
 */
export function imagePicker(root, { csrfToken, onSessionLost }) {
  const drop = $('[data-testid="image-drop"]', root);
  const fileInput = $('[data-testid="image-file"]', root);
  const chosen = $('[data-testid="image-chosen"]', root);
  const preview = $('[data-testid="image-preview"]', root);
  const progress = $('[data-testid="upload-progress"]', root);
  const status = $('[data-testid="upload-status"]', root);
  let current = null; // {file, upload: Promise<upload>}

  const shown = () => !root.hidden;

  function clear() {
    current = null;
    fileInput.value = "";
    chosen.hidden = true;
    preview.removeAttribute("src");
    status.textContent = "";
    root.dataset.state = "empty";
  }

  function pick(file) {
    if (!file) return;
    if (!TYPES.has(file.type)) {
      clear();
      status.textContent = `${file.name || "That file"} is not a PNG, JPEG, WebP or GIF image.`;
      chosen.hidden = false;
      root.dataset.state = "failed";
      return;
    }
    const reader = new FileReader(); // a data: URL: the page's CSP allows no blob: images
    reader.addEventListener("load", () => {
      if (current && current.file === file) preview.src = String(reader.result);
    });
    reader.readAsDataURL(file);
    preview.alt = `Input image: ${file.name || "pasted image"}`;
    progress.value = 0;
    chosen.hidden = false;
    root.dataset.state = "uploading";
    status.textContent = `Uploading ${file.name || "the image"} (${sizeText(file.size)})…`;
    const entry = { file, upload: null };
    entry.upload = send(file, csrfToken(), (fraction) => {
      if (current === entry) progress.value = Math.round(fraction * 100);
    }).then((upload) => {
      if (current === entry) {
        progress.value = 100;
        root.dataset.state = "uploaded";
        status.textContent = `Uploaded ${file.name || "the image"}${upload.width && upload.height ? ` (${upload.width}×${upload.height})` : ""}.`;
      }
      return upload;
    }, (error) => {
      if (error.status === 401) onSessionLost();
      if (current === entry) {
        root.dataset.state = "failed";
        status.textContent = error.message;
      }
      throw error;
    });
    entry.upload.catch(() => {}); // reported in the status; value() reports it again on submit
    current = entry;
  }

  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  fileInput.addEventListener("change", () => pick(fileInput.files[0]));
  $('[data-testid="image-remove"]', root).addEventListener("click", () => {
    clear();
    fileInput.focus();
  });
  // Dropped anywhere on the page while the picker shows (and never opened by the browser instead).
  document.addEventListener("dragover", (event) => {
    if (!shown() || !hasFiles(event)) return;
    event.preventDefault();
    drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) drop.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    drop.classList.remove("dragging");
    if (!shown() || !hasFiles(event)) return;
    event.preventDefault();
    pick([...event.dataTransfer.files].find((f) => TYPES.has(f.type)) ?? event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    if (!shown() || !event.clipboardData) return;
    const file = [...event.clipboardData.files].find((f) => TYPES.has(f.type));
    if (!file) return; // text pastes into the prompt as usual
    event.preventDefault();
    pick(file);
  });
  clear();

  return {
    clear,
    async value() {
      if (!current) throw new Error("Choose an input image first: this model starts from one.");
      try {
        const upload = await current.upload;
        return `upload:${upload.upload_id}`;
      } catch (error) {
        throw new Error(`The input image could not be uploaded: ${error.message}`);
      }
    },
  };
}

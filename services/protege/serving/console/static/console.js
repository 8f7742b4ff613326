// The review console's keyboard: y/n (or up/down) thumbs, 1-9 the top labels, / search,
// Enter submit, s skip, u undo, ? the cheatsheet. Shortcuts pause while typing in a field.
(() => {
  "use strict";
  const verdict = document.getElementById("verdict");
  const search = document.getElementById("label-search");
  const help = document.getElementById("help");
  const options = Array.from(document.querySelectorAll("#labels .label-option"));
  const served = verdict ? verdict.dataset.served : null;

  const typing = (el) =>
    el instanceof HTMLTextAreaElement ||
    el instanceof HTMLSelectElement ||
    (el instanceof HTMLInputElement &&
      !["radio", "checkbox", "button", "submit", "hidden"].includes(el.type)) ||
    (el instanceof HTMLElement && el.isContentEditable);

  const submit = (id) => {
    const form = document.getElementById(id);
    if (form) form.requestSubmit();
  };

  const choose = (input) => {
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    (input.closest("li") || input.closest("label")).scrollIntoView({ block: "nearest" });
  };

  const filter = () => {
    const query = search.value.trim().toLowerCase();
    for (const li of options) li.hidden = query !== "" && !li.dataset.search.includes(query);
  };

  if (verdict) {
    // A thumb and a label agree: a label other than the served one is a thumbs-down.
    verdict.addEventListener("change", (event) => {
      const input = event.target;
      if (input.name === "label") {
        const thumb = document.getElementById(input.value === served ? "verdict-up" : "verdict-down");
        if (thumb) thumb.checked = true;
      } else if (input.name === "verdict") {
        for (const label of verdict.querySelectorAll('input[name="label"]')) {
          if (input.value === "up" || label.value === served) label.checked = false;
        }
      }
    });
  }
  if (search) search.addEventListener("input", filter);
  const helpButton = document.getElementById("help-button");
  if (helpButton) helpButton.addEventListener("click", () => (help.hidden = !help.hidden));

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    if (target === search) {
      if (event.key === "Enter") {
        event.preventDefault();
        const first = options.find((li) => !li.hidden);
        if (first) choose(first.querySelector("input"));
        search.blur();
      } else if (event.key === "Escape") {
        search.value = "";
        filter();
        search.blur();
      }
      return;
    }
    if (typing(target)) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.key === "?") {
      event.preventDefault();
      if (help) help.hidden = !help.hidden;
      return;
    }
    if (event.key === "Escape") {
      if (help) help.hidden = true;
      return;
    }
    if (event.key === "u") return submit("undo");
    if (!verdict) return;
    if (event.key === "Enter" && target instanceof HTMLButtonElement) return; // that button
    switch (event.key) {
      case "y":
      case "ArrowUp":
        event.preventDefault();
        choose(document.getElementById("verdict-up"));
        break;
      case "n":
      case "ArrowDown":
        event.preventDefault();
        choose(document.getElementById("verdict-down"));
        break;
      case "/":
        event.preventDefault();
        search.focus();
        break;
      case "Enter":
        event.preventDefault();
        verdict.requestSubmit();
        break;
      case "s":
        submit("skip");
        break;
      default:
        if (/^[1-9]$/.test(event.key)) {
          const option = options.find((li) => li.dataset.key === event.key);
          if (option) choose(option.querySelector("input"));
        }
    }
  });
})();
